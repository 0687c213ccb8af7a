"""lmms-eval's requests answered by a bliperax checkpoint (no lmms-eval import here).

lmms-eval gives a "simple" model lists of `Instance`s whose `.args` are
  generate_until: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
  loglikelihood:  (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)
and fills `model.task_dict[task][split][doc_id]` with the documents `doc_to_visual`
turns into images. `Requests` implements both calls; `integrations.lmms_eval.Bliperax`
adds lmms-eval's base class.

Prompts (model arg `prompt`):
- "chat" (default; instruct checkpoints): the context is the user turn of the Phi-3
  chat template, after the system turn (`system`: "default" = the released one,
  "none", or the text itself); the answer follows `<|assistant|>\\n`.
- "base" (base checkpoints): the context as raw interleaved text, as in few-shot
  prompts (`bliperax.benchmarks.fewshot`).
Images go where the context has `<image>` markers, one per image in order
(interleaved multi-image prompts); a context without markers gets them in front, one
per image (`<image>\\n` each in a chat, as the SFT data has them; `<image>` each in
base text). Crops are anyres (`anyres=false`: one base crop per image).

generate_until: greedy answers in bucketed batches of `batch_size` rows
(`infer.evaluate.answer`), each row stopping at an end token (and `<|endofchunk|>` in
base prompts), cut at the first of gen_kwargs "until" strings; "max_new_tokens" from
gen_kwargs (default `max_new_tokens`). Requests for sampling or beams are answered
greedily, with one warning.
loglikelihood: (the continuation's mean negative log-likelihood per token given the
context, whether each of its tokens is the greedy one). A loss, lower = likelier: what
lmms-eval's own models return (llava, qwen_vl, ...: the forward's mean cross-entropy)
and what its multiple_choice scorer expects (it takes the argmin; lmms-eval issue
#370), not the summed log-probability its base class's docstring describes. Context
and continuation are tokenized as one string, the ids attributed to each by
`Tokenizer.encode_parts`; one forward per batch (`infer.score`).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import chat as chat_lib
from bliperax.data import tokenizer as tokenizer_lib
from bliperax.infer import checkpoints
from bliperax.infer import evaluate as eval_lib
from bliperax.infer import score as score_lib

PROMPTS = ("chat", "base")
CHUNK = 8  # batches of requests prepared at a time (their crops stay on the host)


class RequestError(ValueError):
  """A request bliperax cannot answer (says which task and document)."""


def _flag(value) -> bool:
  return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class Requests:
  """A checkpoint answering lmms-eval requests (module docstring).

  Args (lmms-eval's --model_args, as key=value): checkpoint (a training workdir or a
  parameter checkpoint), batch_size (8), prompt ("chat" | "base"), system ("default"
  | "none" | text), anyres (true), max_new_tokens (256), dtype ("auto" = bfloat16 on
  GPU/TPU, float32 on CPU | "float32" | "bfloat16").
  """

  def __init__(self, checkpoint: str, batch_size=8, prompt: str = "chat",
               system: str = "default", anyres=True, max_new_tokens=256,
               dtype: str = "auto", max_batch_size=None, device=None):
    del max_batch_size, device  # lmms-eval's; JAX places the model on its default device
    if prompt not in PROMPTS:
      raise ValueError(f"prompt={prompt!r}: one of {', '.join(PROMPTS)}")
    try:
      self.batch_size = int(batch_size)
    except (TypeError, ValueError):
      raise ValueError(f"batch_size={batch_size!r}: a number of rows") from None
    import jax  # pylint: disable=g-import-not-at-top
    params, model_cfg = checkpoints.load(checkpoint)
    self.params, self.model_cfg = checkpoints.for_inference(
        params, model_cfg, checkpoints.inference_dtype(dtype, jax.default_backend()))
    self.tokenizer = tokenizer_lib.Tokenizer()
    self.prompt = prompt
    self.system = {"default": chat_lib.SYSTEM_PROMPT, "none": None}.get(system, system)
    self.anyres = _flag(anyres)
    self.max_new_tokens = int(max_new_tokens)
    self.stops = tuple(self.tokenizer.eos_ids) + (
        (self.tokenizer.endofchunk_id,) if prompt == "base" else ())
    self.task_dict: Dict = {}  # lmms-eval: task -> split -> documents
    self._warned = False

  # --- prompts -----------------------------------------------------------------

  def _images(self, doc_to_visual, doc_id, task, split) -> List[Image.Image]:
    if doc_to_visual is None:
      return []
    visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
    flat = []
    for v in visuals:
      flat.extend(v if isinstance(v, (list, tuple)) else [v])
    for v in flat:
      if not isinstance(v, Image.Image):
        raise RequestError(f"task {task} doc {doc_id}: bliperax reads images; "
                           f"doc_to_visual gave a {type(v).__name__}")
    return flat

  def _context(self, context: str, n_images: int, where: str) -> str:
    """The context with one `<image>` per image (module docstring)."""
    markers = context.count(tokenizer_lib.IMAGE_TOKEN)
    if markers == 0 and n_images:
      sep = "\n" if self.prompt == "chat" else ""
      return (tokenizer_lib.IMAGE_TOKEN + sep) * n_images + context
    if markers != n_images:
      raise RequestError(f"{where}: the context has {markers} {tokenizer_lib.IMAGE_TOKEN} "
                         f"marker(s) but doc_to_visual gave {n_images} image(s)")
    return context

  def _prompt_parts(self, context: str) -> List[str]:
    """The prompt's text as parts: the chat template's, or the raw text."""
    if self.prompt == "chat":
      return [text for text, _ in chat_lib.chat_parts([context], self.system)]
    return [context]

  def _vision(self, images: Sequence[Image.Image]) -> list:
    return [batch_lib.prepare_image(im.convert("RGB"), self.model_cfg, self.anyres)
            for im in images]

  # --- generate_until ---------------------------------------------------------

  def _generation_kwargs(self, gen_kwargs: Optional[dict]) -> Tuple[int, Tuple[str, ...]]:
    kw = dict(gen_kwargs or {})
    until = kw.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    sampled = _flag(kw.get("do_sample", False)) and float(kw.get("temperature", 0) or 0) > 0
    if (sampled or int(kw.get("num_beams", 1) or 1) > 1) and not self._warned:
      logging.warning("bliperax answers greedily; sampling and beam search requests "
                      "(%s) are decoded greedily", kw)
      self._warned = True
    return int(kw.get("max_new_tokens", self.max_new_tokens)), until

  def generate_until(self, requests) -> List[str]:
    """Greedy answers, in the order of `requests`."""
    out: List[Optional[str]] = [None] * len(requests)
    groups: Dict[int, List[int]] = {}  # max_new_tokens -> requests (one decode length each)
    stops = []
    for i, request in enumerate(requests):
      max_new, until = self._generation_kwargs(request.args[1])
      stops.append(until)
      groups.setdefault(max_new, []).append(i)
    for max_new, indices in groups.items():
      step = self.batch_size * CHUNK
      for start in range(0, len(indices), step):
        chunk = indices[start:start + step]
        examples = [self._generation_example(requests[i].args) for i in chunk]
        texts = eval_lib.answer(self.params, self.model_cfg, examples, self.tokenizer,
                                max_new, self.batch_size, eos_ids=self.stops)
        for i, text in zip(chunk, texts):
          for s in stops[i]:
            text = text.split(s, 1)[0] if s else text
          out[i] = text
    return out

  def _generation_example(self, args) -> batch_lib.Example:
    context, _, doc_to_visual, doc_id, task, split = args
    where = f"task {task} doc {doc_id}"
    images = self._images(doc_to_visual, doc_id, task, split)
    context = self._context(context, len(images), where)
    try:
      if self.prompt == "chat":
        return eval_lib.prompt_example(context, images, self.model_cfg, self.tokenizer,
                                       self.anyres, self.system)
      return eval_lib.text_example(context, images, self.model_cfg, self.tokenizer,
                                   self.anyres)
    except ValueError as e:
      raise RequestError(f"{where}: {e}") from e

  # --- loglikelihood ----------------------------------------------------------

  def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
    """(mean NLL of the continuation's tokens, whether it is the greedy one) per request
    (module docstring: lmms-eval's convention)."""
    out: List[Tuple[float, bool]] = []
    step = self.batch_size * CHUNK
    for start in range(0, len(requests), step):
      examples = [self._scored_example(r.args) for r in requests[start:start + step]]
      scores = score_lib.score(self.params, self.model_cfg, examples, self.tokenizer.pad_id,
                               self.batch_size)
      out.extend((s.nll / max(s.tokens, 1), s.greedy) for s in scores)
    return out

  def _scored_example(self, args) -> batch_lib.Example:
    context, target, doc_to_visual, doc_id, task, split = args
    where = f"task {task} doc {doc_id}"
    continuation = target if isinstance(target, str) else target(
        self.task_dict[task][split][doc_id])
    images = self._images(doc_to_visual, doc_id, task, split)
    parts = self._prompt_parts(self._context(context, len(images), where)) + [continuation]
    ids, owners = self.tokenizer.encode_parts(parts)
    labels = [t if o == len(parts) - 1 else batch_spec.IGNORE for t, o in zip(ids, owners)]
    try:
      return batch_lib.expand(ids, labels, self._vision(images),
                              batch_spec.VisionDims.of(self.model_cfg))
    except ValueError as e:
      raise RequestError(f"{where}: {e}") from e

  def generate_until_multi_round(self, requests):
    raise NotImplementedError("bliperax answers single-round requests (generate_until)")
