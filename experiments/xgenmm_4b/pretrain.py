"""xGen-MM 4B pre-training (SPEC.md §5): SigLIP frozen, resampler + Phi-3-mini trained.

Global batch 512 sequences x 2048 tokens, 4 single-crop images (128 tokens each) per
sequence, bf16 compute with float32 master weights, scanned layers with full remat,
FSDP over the whole slice. Sized for a TPU v5e-256:

  python tools/aot_compile.py --config=experiments/xgenmm_4b/pretrain.py --topology=v5e-256

Knobs: `:batch=...,seq=...,remat=...,images=...`.
"""
from bliperax import configs


def get_config(arg=None):
  k = configs.parse_arg(arg)
  c = configs.base("xgenmm_4b")
  c.total_steps = 50_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.model.init_from = ""  # e.g. tools/convert_checkpoint.py --from=hf_backbones output
  c.model.numerics.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                          remat_policy=k.get("remat", "full"))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.optim.update(lr=1e-4, warmup_steps=2000, weight_decay=0.05, final_lr_ratio=0.0)
  c.train.update(global_batch=int(k.get("batch", 512)), seq_len=int(k.get("seq", 2048)),
                 accum_steps=1, images_per_row=int(k.get("images", 4)))
  return c
