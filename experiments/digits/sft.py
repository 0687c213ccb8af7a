r"""Digits, stage 2: chat fine-tuning on VQA, sums and wide-number reading, then evaluation.

  python -m bliperax.train --config=experiments/digits/sft.py:root=/tmp/digits \
      --config.model.init_from=/tmp/digits_run/pretrain_params --workdir=/tmp/digits_run/sft
  python -m bliperax.evaluate --config=experiments/digits/sft.py:root=/tmp/digits \
      --checkpoint=/tmp/digits_run/sft

`init_from` takes a parameter checkpoint; tools/main_job.sh writes one from the
pre-training workdir (`bliperax.infer.checkpoints.export`).
Knobs: root=DIR, steps=N, batch=B, workers=N, eval_every=N (200; 0: no evaluators in
training), eval_limit=N (100 held-out questions per task).

Unlike the released stages (bliperax/DESIGN.md §9: SigLIP frozen throughout), the ViT keeps
training here: it learned digits from scratch in stage 1, and the chats' direct
answers lift held-out recognition further (single-digit VQA after 1000 steps: 98%
trained vs 96% frozen, on 100 questions each). The input
embedding table is frozen instead: its dense gradient and Adam update would cost a
quarter of the step. The head runs only at loss positions (answers: at most 16 per
row).

Only the reading task uses anyres (bliperax/DESIGN.md §3, with grid (4, 1) added): a row
of n digits becomes the squashed global crop plus n one-digit crops, so
(1+n)·4 vision tokens. VQA and sums see one base crop per image. Chats carry
no system turn, to keep rows short on CPU; `cfg.eval` tells
`bliperax.evaluate` where the held-out chats are and how to crop them.

In training, `cfg.evals` (bliperax/train/evals.py) answers the first `eval_limit`
held-out questions of each task every `eval_every` steps (exact match, cropped as
`cfg.eval` crops them) and measures the held-out perplexity of the sums' answers, so
metrics.jsonl shows accuracy rising during fine-tuning.
"""
import ml_collections

from bliperax import configs

# task -> (training weight, anyres)
TASKS = {"vqa": (1.0, False), "sum": (5.0, False), "read": (2.0, True)}


def get_config(arg=None):
  c = configs.digits_stage(
      arg, steps=1200, seq_len=96, loss_tokens_per_row=16, freeze=("^lm/embed/",),
      data_seed=1, max_crops=12, sources=TASKS)
  c.data.system = None
  root = configs.digits_root(arg)
  c.eval = ml_collections.ConfigDict(dict(
      root=f"{root}/heldout", tasks=",".join(TASKS), max_new_tokens=8, batch_size=64,
      anyres=",".join(t for t, (_, a) in TASKS.items() if a)))
  knobs = configs.parse_arg(arg)
  every, limit = int(knobs.get("eval_every", 200)), int(knobs.get("eval_limit", 100))
  c.evals = ml_collections.ConfigDict({
      task: dict(kind="exact_match", paths=f"{root}/heldout/{task}", every_steps=every,
                 limit=limit, anyres=anyres, max_new_tokens=8, batch_size=64)
      for task, (_, anyres) in TASKS.items()} if every else {})
  if every:
    c.evals.sum_nll = dict(kind="perplexity", paths=f"{root}/heldout/sum",
                           every_steps=every, limit=limit, batch_size=64)
  return c
