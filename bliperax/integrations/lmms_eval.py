r"""`--model bliperax` for lmms-eval: any lmms-eval task on a bliperax checkpoint.

  pip install -e ".[lmms]"
  python -m lmms_eval --model bliperax --model_args checkpoint=DIR[,batch_size=8,prompt=chat] \
      --tasks mme --batch_size 8 --output_path results/

lmms-eval finds the class through the `lmms_eval.models` entry point setup.py declares
(`bliperax.integrations.lmms_eval_manifest`). What the model args mean and how
requests become prompts: `bliperax.integrations.lmms_requests`.
"""
from lmms_eval.api.model import lmms

from bliperax.integrations.lmms_requests import Requests


class Bliperax(Requests, lmms):
  """lmms-eval's simple model over `Requests` (generate_until, loglikelihood)."""
  is_simple = True

  def __init__(self, checkpoint: str, **kwargs):
    lmms.__init__(self)  # rank 0 of 1, cache hook, task_dict
    Requests.__init__(self, checkpoint, **kwargs)
