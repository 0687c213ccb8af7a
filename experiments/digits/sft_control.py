r"""Digits, DPO's control: the SFT continued for DPO's steps, with DPO's LoRA and lr.

  python -m bliperax.train --config=experiments/digits/sft_control.py:root=/tmp/digits \
      --config.model.init_from=/tmp/digits_run/sft_params --workdir=/tmp/digits_run/sft_control

What it rules out: that the DPO stage (experiments/digits/dpo.py) gains only because
the model trained longer, or only because it saw DPO's prompts. The control differs
from the DPO run in the objective alone: next-token cross-entropy on the SFT's own
chat mixture (experiments/digits/sft.py: vqa, sum and read, same rows, crops and
pipeline) with DPO's prompt sets added (`dpo.PAIR_SOURCES`: train/sum_moved, each
chat with its true answer, at the weight of the SFT task it stands for) instead of
the DPO loss on preference pairs from those prompts; everything else is DPO's: the
same start (the SFT export), steps, rows per batch, LoRA adapters (rank, alpha,
targets) and lr schedule. Same trainable parameters and optimizer, so whatever more
steps of that optimizer, or the moved digits' true answers, buy, the control gets too.

Why not the SFT's own full-parameter schedule continued instead: restarting its
peak lr (3e-3) on a converged model, or holding its final lr (1.5e-4) on every
parameter, would spend a different budget from DPO's (other parameters, another
lr), so a difference could come from the budget rather than the objective.

Knobs: root=DIR, steps=N (DPO's by default), batch=B, workers=N, lr=LR, rank=R.
"""
import importlib.util
import pathlib

from bliperax import configs

_DPO = pathlib.Path(__file__).resolve().parent / "dpo.py"


def _dpo_config_module():
  """experiments/digits/dpo.py, the source of the steps, LoRA and lr this matches."""
  spec = importlib.util.spec_from_file_location("digits_dpo_config", _DPO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  dpo = _dpo_config_module()
  c = dpo.sft_config(arg)
  dpo.with_dpo_budget(c, arg)
  root = configs.digits_root(arg)
  for name, (prompts, _, anyres) in dpo.PAIR_SOURCES.items():
    c.data.sources[prompts] = dict(paths=f"{root}/train/{prompts}",
                                   weight=c.data.sources[name].weight, anyres=anyres)
  return c
