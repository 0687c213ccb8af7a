"""xGen-MM 14B pre-training: the 4B recipe with a Phi-3-medium decoder (GQA, 10 kv heads).

Global batch 512 x 2048 tokens, 4 images per sequence, bf16 compute / float32 master
weights, scanned layers, full remat, FSDP. Sized for a TPU v5p-128:

  python tools/aot_compile.py --config=experiments/xgenmm_14b/pretrain.py --topology=v5p-128
"""
from bliperax import configs


def get_config(arg=None):
  return configs.pretrain("xgenmm_14b", arg)
