"""Inference: KV-cache generation and evaluation."""
