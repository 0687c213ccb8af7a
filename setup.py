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
    # gs:// shard folders, init checkpoints, workdirs and exports (bliperax/paths.py):
    # gcsfs behind etils.epath; Orbax and ArrayRecord read buckets themselves.
    "etils[epath,epath-gcs]",
    "einops",
    "tqdm",
    "msgpack",
    "array-record",  # training shards
    "pyarrow",  # parquet input of tools/build_shards.py
    "grain",  # host input pipeline
    "tensorflow-datasets",  # TFDS sources (array_record format; no TensorFlow needed)
    "tensorboardX",  # training metrics
    "matplotlib",  # the sweep tool's plots (bliperax/sweep/plots.py)
    "scikit-learn",  # the bundled digits of the main job (tools/make_digits.py)
]
_TORCH = ["torch==2.13.0", "transformers>=4.41", "safetensors"]
# Caption metrics (CIDEr-D, BLEU-4) computed by pycocoevalcap itself. An extra, not
# core: its wheel is ~100 MB (METEOR and SPICE jars bundled) and pulls pycocotools;
# VQA accuracy and everything else need none of it. In `test` too, so the default
# suite compares against it.
_EVAL = ["pycocoevalcap>=1.2"]
# lmms-eval's harness for `--model bliperax` (bliperax/integrations/lmms_eval.py). Its
# own extra, not `eval`: lmms-eval 0.7.3 pulls ~90 packages (torch with CUDA wheels,
# torchvision, datasets, accelerate, wandb, ...: 6 GB in a virtualenv over this
# machine's packages). Its evaluator imports filelock._api, which filelock 4 removed.
_LMMS = ["lmms-eval>=0.7", "filelock<4"]

setuptools.setup(
    name="bliperax",
    version="0.1.0",
    description="xGen-MM (BLIP-3) large multimodal models in JAX/Flax",
    packages=setuptools.find_packages(include=["bliperax", "bliperax.*"]),
    package_data={"bliperax": ["assets/tokenizer/*"]},
    python_requires=">=3.10",
    install_requires=_CORE,
    extras_require={
        # gcp-storage-emulator: a local GCS for the gs:// tests (tests/gcs_emulator.py).
        # peft: the LoRA export's adapters load onto the HF model (tests/test_lora.py).
        "test": ["pytest", "pytest-xdist", "gcp-storage-emulator", "peft"] + _EVAL,
        "torch": _TORCH,
        "eval": _EVAL,
        "lmms": _LMMS + _EVAL,
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    # python -m lmms_eval --model bliperax (lmms-eval reads this group at import).
    entry_points={"lmms_eval.models": [
        "bliperax = bliperax.integrations:lmms_eval_manifest"]},
)
