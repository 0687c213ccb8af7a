"""bliperax: the xGen-MM (BLIP-3) family of multimodal models in JAX/Flax."""

__version__ = "0.1.0"
