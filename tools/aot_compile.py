r"""Compile the real training step for a TPU topology on a CPU host (libtpu compile-only path).

  python tools/aot_compile.py --config=experiments/xgenmm_4b/pretrain.py:synthetic=1,init=random \
      --topology=v5e-256
  python tools/aot_compile.py --config=experiments/xgenmm_14b/sft.py:synthetic=1,init=random \
      --topology=v5p-128
  python tools/aot_compile.py --config=... --topology=v6e-256 --num_slices=2   # multi-slice

The same command as `python -m bliperax.aot`; the code, and what it prints, is in
bliperax/aot.py (shared with `python -m bliperax.sweep --aot=TOPOLOGY`, which compiles
every member of a sweep). Needs libtpu (`pip install -e ".[tpu]"`), no TPU. The last
line printed is a JSON object with `fits` (per-chip total below the chip's HBM).
"""
from bliperax import aot

if __name__ == "__main__":
  aot.cli_main()
