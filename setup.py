"""bliperax: xGen-MM (BLIP-3) in JAX/Flax."""
import setuptools

_CORE = [
    "jax>=0.4.35",
    "flax>=0.10",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "sentencepiece",
    "safetensors",
    "numpy",
    "pillow",
    "absl-py",
    "etils[epath]",
    "einops",
    "tqdm",
    "msgpack",
    "array-record",  # training shards
    "pyarrow",  # parquet input of tools/build_shards.py
    "grain",  # host input pipeline
    "tensorflow-datasets",  # TFDS sources (array_record format; no TensorFlow needed)
    "tensorboardX",  # training metrics
    "scikit-learn",  # the bundled digits of the main job (tools/make_digits.py)
]
_TORCH = ["torch==2.13.0", "transformers>=4.41", "safetensors"]

setuptools.setup(
    name="bliperax",
    version="0.1.0",
    description="xGen-MM (BLIP-3) large multimodal models in JAX/Flax",
    packages=setuptools.find_packages(include=["bliperax", "bliperax.*"]),
    package_data={"bliperax": ["assets/tokenizer/*"]},
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require={
        "test": ["pytest", "pytest-xdist"],
        "torch": _TORCH,
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
