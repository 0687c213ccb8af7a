"""xGen-MM 14B pre-training: the 4B recipe with a Phi-3-medium decoder (GQA, 10 kv heads).

Global batch 512 x 2048 tokens, 4 images per sequence, bf16 compute / float32 master
weights, scanned layers, full remat, FSDP. Sized for a TPU v5p-128:

  python tools/aot_compile.py --config=experiments/xgenmm_14b/pretrain.py --topology=v5p-128
"""
from bliperax import configs


def get_config(arg=None):
  k = configs.parse_arg(arg)
  c = configs.base("xgenmm_14b")
  c.total_steps = 50_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.model.numerics.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                          remat_policy=k.get("remat", "full"))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.optim.update(lr=1e-4, warmup_steps=2000, weight_decay=0.05, final_lr_ratio=0.0)
  c.train.update(global_batch=int(k.get("batch", 512)), seq_len=int(k.get("seq", 2048)),
                 accum_steps=1, images_per_row=int(k.get("images", 4)))
  return c
