"""bliperax inside other tools' evaluation harnesses (optional extras).

`lmms_eval`: the `--model bliperax` of lmms-eval (`pip install -e ".[lmms]"`), found
through the `lmms_eval.models` entry point that setup.py declares (`lmms_eval_manifest`);
its request handling lives in `lmms_requests` and needs no lmms-eval.
"""


def lmms_eval_manifest():
  """The entry point lmms-eval (0.7+) reads to resolve `--model bliperax`."""
  from lmms_eval.models.registry_v2 import ModelManifest  # pylint: disable=g-import-not-at-top
  return ModelManifest(model_id="bliperax",
                       simple_class_path="bliperax.integrations.lmms_eval.Bliperax")
