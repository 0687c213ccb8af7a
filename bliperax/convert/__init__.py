"""Parameter conversion between Hugging Face / PyTorch checkpoints and bliperax."""
