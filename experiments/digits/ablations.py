r"""The paper's ablations in miniature, on the digits data (a sweep config).

  python -m bliperax.sweep --config=experiments/digits/ablations.py --workdir=/tmp/ablations
  python -m bliperax.sweep --config=experiments/digits/ablations.py --workdir=/tmp/ablations \
      --dry_run                       # the members, what differs, the commands

Three of the paper's questions (xGen-MM §6), each against one baseline (the digits
recipe of experiments/digits/, shortened):
  * visual tokens per crop: the resampler's `num_latents` 1, 2 and 8 beside the
    digits model's 4;
  * any-resolution crops vs the squashed base crop only, for the reading task
    (rows of 1-4 digits): `data.sources.read.anyres` and the evaluation's crops;
  * the vision tower frozen vs trained during fine-tuning (`sft:optim.freeze`).
Each member makes the same journey as tools/main_job.py: caption pre-training,
export, chat fine-tuning, held-out evaluation of every task (exact match, the
first `eval_limit` questions per task). The data is made once for the sweep.

Knobs (`ablations.py:k=v,...`): pretrain_steps (200), sft_steps (400),
eval_limit (300), num_train (3000 training samples of sum and read).
The schedules are a third of the main job's, so that the six members finish in
about half an hour on 2 CPU cores; the differences the table shows are the
ablations' at this budget.
"""
from bliperax import configs
from bliperax import sweep

# The digits fine-tuning's frozen input embedding (experiments/digits/sft.py), plus
# the vision tower for the frozen-ViT member.
_SFT_FREEZE = ("^lm/embed/",)


def get_sweep(arg=None):
  del arg
  # The baseline names its num_latents (the digits preset's 4), so the latents plot
  # has it as a point; the other members leave it unset and stay off that plot.
  return (
      [{"name": "baseline", "model.resampler.num_latents": 4}]
      + sweep.product({"model.resampler.num_latents": [1, 2, 8]})
      + [{"name": "base_crop_only", "data.sources.read.anyres": False, "eval.anyres": ""},
         {"name": "frozen_vit_sft", "sft:optim.freeze": _SFT_FREEZE + ("^vision/",)}])


def get_stages(arg=None):
  knobs = configs.parse_arg(arg)
  unknown = set(knobs) - {"pretrain_steps", "sft_steps", "eval_limit", "num_train"}
  if unknown:
    raise ValueError(f"unknown knob(s) {', '.join(sorted(unknown))} for the digits "
                     "ablations; knobs: pretrain_steps, sft_steps, eval_limit, num_train")
  num_train = int(knobs.get("num_train", 3000))
  pretrain = f"experiments/digits/pretrain.py:root={{sweep}}/data,steps={knobs.get('pretrain_steps', 200)}"
  sft = (f"experiments/digits/sft.py:root={{sweep}}/data,steps={knobs.get('sft_steps', 400)},"
         "eval_every=0")
  return [
      sweep.setup("data", ["python", "tools/make_digits.py", "--output={sweep}/data",
                           f"--num_sum={num_train}", f"--num_read={num_train}"]),
      sweep.train("pretrain", pretrain),
      sweep.export("pretrain_params", of="pretrain"),
      sweep.train("sft", sft, init_from="pretrain_params"),
      sweep.evaluate("eval", sft, checkpoint="sft",
                     args=(f"--limit={knobs.get('eval_limit', 300)}",),
                     metrics=("accuracy",)),
  ]
