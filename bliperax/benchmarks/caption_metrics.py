"""CIDEr-D and BLEU-4 as pycocoevalcap computes them, with pycocoevalcap itself.

`score` does what pycocoevalcap's COCOEvalCap does for these two metrics: the
references are tokenized in one PTB call and the predictions in another (Stanford
PTBTokenizer through Java, then the punctuation tokens dropped), and the tokens go
to `Cider().compute_score` (CIDEr-D: sigma 6, clipped counts, document frequencies
from the references of the images scored) and `Bleu(4).compute_score` (corpus BLEU,
'closest' reference length). The numbers are pycocoevalcap's, unscaled: papers
print CIDEr x 100.

Without `java` on the PATH the PTB step cannot run, and `ptb_tokenizer` stands in
for it (the same tokens on ordinary captions); every result says which tokenizer
ran. Needs the `eval` extra (`pip install -e ".[eval]"`).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

from bliperax.benchmarks import ptb_tokenizer

TOKENIZERS = ("auto", "ptb", "python")
PTB_NAME = "ptb (Stanford PTBTokenizer via pycocoevalcap, Java)"
PYTHON_NAME = "python (bliperax.benchmarks.ptb_tokenizer; Java not used)"


class CaptionMetricError(RuntimeError):
  """pycocoevalcap is missing, or its Java tokenizer failed."""


def java_available() -> bool:
  return shutil.which("java") is not None


def _pycocoevalcap():
  """(Bleu, Cider, PTBTokenizer), or a CaptionMetricError saying what to install."""
  try:
    from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
    from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CaptionMetricError(f"caption metrics need pycocoevalcap ({e}); install the eval "
                             "extra: pip install -e \".[eval]\"") from None
  return Bleu, Cider, PTBTokenizer


@contextlib.contextmanager
def _captured_stderr():
  """Collects file descriptor 2 (the Java tokenizer's progress line) into a buffer."""
  with tempfile.TemporaryFile(mode="w+b") as sink:
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    buffer = io.StringIO()
    try:
      yield buffer
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      sink.seek(0)
      buffer.write(sink.read().decode("utf-8", "replace"))


def ptb_tokenize(groups: Sequence[Sequence[str]]) -> List[List[str]]:
  """pycocoevalcap's PTBTokenizer on captions grouped by image (one Java call)."""
  PTBTokenizer = _pycocoevalcap()[2]  # pylint: disable=invalid-name
  captions = {i: [{"caption": c} for c in group] for i, group in enumerate(groups)}
  with _captured_stderr() as err:
    try:
      with contextlib.redirect_stdout(io.StringIO()):
        tokens = PTBTokenizer().tokenize(captions)
    except (OSError, ValueError) as e:
      raise CaptionMetricError(f"the PTB tokenizer (Java) failed: {e} (--tokenizer=python "
                               "runs without Java)") from None
  if any(len(tokens.get(i, ())) != len(g) for i, g in enumerate(groups)):
    log = " ".join(err.getvalue().split())[-500:]
    raise CaptionMetricError(f"the PTB tokenizer (Java) returned the wrong number of lines "
                             f"({log or 'no output'}; --tokenizer=python runs without Java)")
  return [tokens[i] for i in range(len(groups))]


def python_tokenize(groups: Sequence[Sequence[str]]) -> List[List[str]]:
  """The Python stand-in, on the same lines in the same order as one PTB call."""
  flat = ptb_tokenizer.tokenize([c for g in groups for c in g])
  out, start = [], 0
  for g in groups:
    out.append(flat[start:start + len(g)])
    start += len(g)
  return out


def resolve_tokenizer(tokenizer: str = "auto") -> str:
  """'auto' -> 'ptb' where java is on the PATH, else 'python'."""
  if tokenizer not in TOKENIZERS:
    raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
  if tokenizer == "auto":
    return "ptb" if java_available() else "python"
  if tokenizer == "ptb" and not java_available():
    raise CaptionMetricError("the PTB tokenizer needs java on the PATH")
  return tokenizer


def tokenize_all(references: Sequence[Sequence[str]], predictions: Sequence[str],
                 tokenizer: str = "auto") -> Tuple[List[List[str]], List[List[str]], str]:
  """(reference tokens, prediction tokens, tokenizer name), two calls as COCOEvalCap."""
  which = resolve_tokenizer(tokenizer)
  run = ptb_tokenize if which == "ptb" else python_tokenize
  refs = run(references)
  preds = run([[p] for p in predictions])
  return refs, preds, PTB_NAME if which == "ptb" else PYTHON_NAME


def score_tokens(refs: Sequence[Sequence[str]], preds: Sequence[Sequence[str]],
                 subset: Optional[Sequence[int]] = None) -> Dict[str, float]:
  """CIDEr and Bleu_4 (pycocoevalcap's values) of tokenized captions, on `subset`
  (indices; CIDEr's document frequencies come from the subset's references)."""
  Bleu, Cider, _ = _pycocoevalcap()  # pylint: disable=invalid-name
  keep = range(len(refs)) if subset is None else subset
  gts = {i: list(refs[i]) for i in keep}
  res = {i: list(preds[i]) for i in keep}
  if not gts:
    raise ValueError("no images to score")
  with contextlib.redirect_stdout(io.StringIO()):
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  return {"CIDEr": float(cider), "Bleu_4": float(bleu[3])}


def score(references: Sequence[Sequence[str]], predictions: Sequence[str],
          tokenizer: str = "auto", groups: Optional[Sequence[Optional[str]]] = None
          ) -> Dict:
  """{"CIDEr", "Bleu_4", "tokenizer", "images"}, plus {"perGroup": {group: {"CIDEr",
  "Bleu_4", "images"}}} when `groups` (e.g. NoCaps domains) is given."""
  if len(references) != len(predictions):
    raise ValueError(f"{len(predictions)} predictions for {len(references)} images")
  refs, preds, name = tokenize_all(references, predictions, tokenizer)
  out = dict(score_tokens(refs, preds), tokenizer=name, images=len(refs))
  if groups is not None:
    members: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
      if g is not None:
        members.setdefault(g, []).append(i)
    out["perGroup"] = {g: dict(score_tokens(refs, preds, idx), images=len(idx))
                       for g, idx in sorted(members.items())}
  return out
