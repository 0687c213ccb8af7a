"""Flax (linen) modules of xGen-MM: SigLIP ViT, Perceiver resampler, Phi-3, the VLM."""
