"""Ablation sweeps: members defined in a config file, run, tabulated, plotted.

  python -m bliperax.sweep --config=experiments/digits/ablations.py:root=/tmp/digits \
      --workdir=/tmp/ablations [--parallel=2] [--dry_run] [--only=NAME,...]
  python -m bliperax.sweep --collect --workdir=DIR           # table and plots again
  python -m bliperax.sweep --config=... --workdir=DIR --aot=v5e-256   # fit, nothing run

A sweep config (a Python file, loaded by path) defines

  from bliperax import sweep

  def get_sweep(arg=None):            # the members: override dicts on dot paths
    return sweep.product({"model.resampler.num_latents": [2, 4, 8]},
                         {"sft:optim.freeze": [("^vision/",), ()]})

  def get_stages(arg=None):           # what every member runs, in order
    data = "root={sweep}/data"        # {sweep}: the sweep's --workdir
    return [sweep.setup("data", ["python", "tools/make_digits.py", "--output={sweep}/data"]),
            sweep.train("pretrain", f"experiments/digits/pretrain.py:{data}"),
            sweep.export("pretrain_params", of="pretrain"),
            sweep.train("sft", f"experiments/digits/sft.py:{data}", init_from="pretrain_params"),
            sweep.evaluate("eval", f"experiments/digits/sft.py:{data}", checkpoint="sft")]

Modules, one idea each: `spec` (members, product/zip_, names), `stages` (stage
records and their commands), `plan` (loading, override routing and checks),
`runner` (running members, resume), `progress` (live lines), `results` (the table,
`--collect`), `plots`, `aot_members` (`--aot`), `files` (local or gs:// files).
"""
from bliperax.sweep.spec import NAME_KEY, SweepError, member_names, product, zip_
from bliperax.sweep.stages import Stage, evaluate, export, setup, train

__all__ = ["NAME_KEY", "Stage", "SweepError", "evaluate", "export", "member_names",
           "product", "setup", "train", "zip_"]
