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
# Caption metrics (CIDEr-D, BLEU-4) computed by pycocoevalcap itself. An extra, not
# core: its wheel is ~100 MB (METEOR and SPICE jars bundled) and pulls pycocotools;
# VQA accuracy and everything else need none of it. In `test` too, so the default
# suite compares against it.
_EVAL = ["pycocoevalcap>=1.2"]

setuptools.setup(
    name="bliperax",
    version="0.1.0",
    description="xGen-MM (BLIP-3) large multimodal models in JAX/Flax",
    packages=setuptools.find_packages(include=["bliperax", "bliperax.*"]),
    package_data={"bliperax": ["assets/tokenizer/*"]},
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require={
        "test": ["pytest", "pytest-xdist"] + _EVAL,
        "torch": _TORCH,
        "eval": _EVAL,
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
