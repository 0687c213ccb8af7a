"""The Phi-3 SentencePiece tokenizer with the xGen-MM added tokens, and its bundled files.

Runtime dependencies are `sentencepiece` and `numpy` only; `transformers` is
used by the tests as an oracle, never here.

Tokenization rules (bliperax/DESIGN.md §5) that the released models were trained with:

* The vocabulary is Phi-3's SentencePiece BPE (32000 pieces, byte fallback)
  plus added tokens: the Phi-3 chat tokens 32000-32011 and the three VLM
  tokens `<image>` 32012, `<image placeholder>` 32013, `<|endofchunk|>` 32014.
* A string is cut at added tokens. The chat tokens carry `rstrip`: they
  swallow the whitespace that follows them, so the `\\n` after `<|user|>` or
  `<|end|>` yields no id.
* SentencePiece's dummy prefix `▁` is added once, at the start of the whole
  string; text after an added token continues without one (`<image>A` gives
  `A`, not `▁A`).
* When the string starts with an added token, that lone prefix becomes the
  id 29871 (`▁`), except before the tokens the reference registered as
  "special" (`<unk>`, `<s>`, `<|endoftext|>`, `<pad>` and the VLM tokens),
  where it is dropped. Hence every chat prompt starts `29871, 32006, …`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

ASSET_DIR = pathlib.Path(__file__).resolve().parents[1] / "assets" / "tokenizer"
DEFAULT_MODEL_PATH = ASSET_DIR / "phi3.model"

# Tokens the VLM appends after the 32012 entries of the Phi-3 tokenizer, in
# id order (bliperax/DESIGN.md §2). They come from the model code,
# not from the tokenizer files, hence the constants.
IMAGE_TOKEN = "<image>"
IMAGE_PLACEHOLDER_TOKEN = "<image placeholder>"
ENDOFCHUNK_TOKEN = "<|endofchunk|>"
VLM_TOKENS = (IMAGE_TOKEN, IMAGE_PLACEHOLDER_TOKEN, ENDOFCHUNK_TOKEN)

SYSTEM_TAG = "<|system|>"
USER_TAG = "<|user|>"
ASSISTANT_TAG = "<|assistant|>"
END_TAG = "<|end|>"
ENDOFTEXT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"

_SPIECE_UNDERLINE = "\u2581"

# A serialized ModelProto fragment: field 3 (normalizer_spec) holding field 3
# (add_dummy_prefix) = false. Protobuf merges repeated occurrences of a message
# field, so appending it to a model file switches the dummy prefix off without
# depending on the protobuf package (this is what the reference's
# `legacy=False` does through `MergeFrom`).
_NO_DUMMY_PREFIX = b"\x1a\x02\x18\x00"


@dataclasses.dataclass(frozen=True)
class AddedToken:
  """A token matched literally in the text before SentencePiece runs.

  Attributes:
    content: the literal text, e.g. `<|user|>`.
    id: its vocabulary id.
    rstrip: swallows the whitespace right after it.
    lstrip: swallows the whitespace right before it.
    absorbs_prefix: a string starting with it gets no lone `▁` in front (the
      reference registered it as a special token).
  """
  content: str
  id: int
  rstrip: bool = False
  lstrip: bool = False
  absorbs_prefix: bool = False


def _load_added_tokens(asset_dir: pathlib.Path) -> list[AddedToken]:
  """Reads the Phi-3 added tokens (and their strip flags) from the files."""
  config = json.loads((asset_dir / "tokenizer_config.json").read_text())
  special_map = json.loads((asset_dir / "special_tokens_map.json").read_text())
  registered = {v["content"] if isinstance(v, dict) else v
                for k, v in special_map.items()
                if k != "additional_special_tokens"}
  tokens = []
  for key, entry in sorted(config["added_tokens_decoder"].items(),
                           key=lambda kv: int(kv[0])):
    if entry.get("single_word"):
      raise ValueError(f"single_word added tokens are unsupported: {entry}")
    tokens.append(AddedToken(
        content=entry["content"], id=int(key), rstrip=entry["rstrip"],
        lstrip=entry["lstrip"],
        absorbs_prefix=entry["content"] in registered))
  return tokens


def _check_against_added_tokens_json(tokens: list[AddedToken],
                                     asset_dir: pathlib.Path) -> None:
  """Fails loudly when the two token files disagree on an id."""
  path = asset_dir / "added_tokens.json"
  if not path.exists():
    return
  by_content = {t.content: t.id for t in tokens}
  for content, token_id in json.loads(path.read_text()).items():
    if by_content.get(content) != token_id:
      raise ValueError(f"{path}: {content!r} is {token_id}, "
                       f"tokenizer_config.json says {by_content.get(content)}")


@dataclasses.dataclass
class _Item:
  """A piece of the string being encoded: text or one added token.

  `start`/`end` are offsets into the prefixed string; strip passes move them.
  """
  start: int
  end: int
  token: AddedToken | None = None


class Tokenizer:
  """Phi-3 SentencePiece tokenizer with the xGen-MM added tokens.

  Both modes implement the rules in this module's docstring, which reproduce
  the reference's slow `LlamaTokenizer(legacy=False)` (transformers 4.41,
  no BOS) plus the three VLM tokens. They differ in one point only:

  * `reference_compatible=True` also treats the literal strings `<unk>`,
    `<s>` and `</s>` as added tokens (ids 0, 1, 2; `</s>` swallows the
    whitespace after it), as the reference does because they sit in
    `added_tokens_decoder`.
  * The default mode encodes those strings as ordinary text: control ids
    have no business in user text, and a document that quotes `</s>` should
    not inject an end-of-sentence id. On any text without those three
    strings the two modes give identical ids.

  Everything else is kept in the default mode on purpose, even the odd lone
  `▁` (29871) before a leading `<|system|>` and the missing `▁` after an
  added token: the released checkpoints were trained on exactly these ids,
  and each alternative we considered (a `▁` after every added token, as
  `tokenizer.json` does; no lone `▁`) changes either the chat or the
  few-shot prompts the models know. Added tokens are always matched
  leftmost-longest in raw text, so text containing `<|end|>` encodes the
  control token; escape such text upstream if that matters.

  `decode` inverts `encode` except for the whitespace the rstrip tokens
  swallowed: the first text run is decoded as a sentence start (the dummy
  `▁` removed), runs after an added token verbatim.
  """

  def __init__(self, model_path: str | pathlib.Path | None = None, *,
               reference_compatible: bool = False):
    """Loads the model and the token files that sit next to it.

    Args:
      model_path: the SentencePiece `.model` file; its directory must also
        hold `tokenizer_config.json` and `special_tokens_map.json`. Defaults
        to the copy bundled with the package.
      reference_compatible: see the class docstring.
    """
    model_path = pathlib.Path(model_path or DEFAULT_MODEL_PATH)
    proto = model_path.read_bytes()
    # Decodes a sentence start: SentencePiece's own dummy prefix handling.
    self._sp_start = spm.SentencePieceProcessor(model_proto=proto)
    # Encodes every run and decodes runs that follow an added token.
    self._sp_cont = spm.SentencePieceProcessor(
        model_proto=proto + _NO_DUMMY_PREFIX)
    self.reference_compatible = reference_compatible

    phi3_tokens = _load_added_tokens(model_path.parent)
    _check_against_added_tokens_json(phi3_tokens, model_path.parent)
    next_id = max(t.id for t in phi3_tokens) + 1
    vlm_tokens = [AddedToken(c, next_id + i, absorbs_prefix=True)
                  for i, c in enumerate(VLM_TOKENS)]
    all_tokens = phi3_tokens + vlm_tokens
    # Decoding always knows ids 0-2; only reference mode matches their text.
    self._by_id = {t.id: t for t in all_tokens}
    self._id_of_content = {t.content: t.id for t in all_tokens}
    self._by_content = {t.content: t for t in all_tokens
                        if reference_compatible or
                        t.id >= self._sp_start.vocab_size()}
    self._vocab_size = max(self._by_id) + 1
    self._check_contiguous()
    contents = sorted(self._by_content, key=len, reverse=True)
    self._pattern = re.compile("|".join(re.escape(c) for c in contents))
    self._lone_prefix_id = self._sp_start.piece_to_id(_SPIECE_UNDERLINE)

  @classmethod
  def reference(cls, model_path: str | pathlib.Path | None = None
                ) -> Tokenizer:
    """The reference-compatible tokenizer (bit-exact with the fixtures)."""
    return cls(model_path, reference_compatible=True)

  def _check_contiguous(self) -> None:
    """Ids past the SentencePiece vocabulary must be 32000, 32001, … ."""
    sp_size = self._sp_start.vocab_size()
    extra = sorted(i for i in self._by_id if i >= sp_size)
    if extra != list(range(sp_size, sp_size + len(extra))):
      raise ValueError(f"added token ids are not contiguous: {extra}")

  # --- vocabulary -----------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    """Number of ids (32015): the logits' width."""
    return self._vocab_size

  def token_id(self, name: str) -> int:
    """Id of an added token (`<|end|>`) or of a SentencePiece piece (`▁a`)."""
    if name in self._id_of_content:
      return self._id_of_content[name]
    piece_id = self._sp_start.piece_to_id(name)
    if piece_id == self._sp_start.unk_id() and name != "<unk>":
      raise KeyError(f"not in the vocabulary: {name!r}")
    return piece_id

  @property
  def pad_id(self) -> int:
    return self.token_id(PAD_TOKEN)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Stop ids for generation: `<|end|>` first, then `<|endoftext|>`.

    The released generation config names only 32000, which let the chat
    models run on past their answers (bliperax/DESIGN.md §5).
    """
    return (self.token_id(END_TAG), self.token_id(ENDOFTEXT_TOKEN))

  @property
  def image_id(self) -> int:
    return self.token_id(IMAGE_TOKEN)

  @property
  def image_placeholder_id(self) -> int:
    return self.token_id(IMAGE_PLACEHOLDER_TOKEN)

  @property
  def endofchunk_id(self) -> int:
    return self.token_id(ENDOFCHUNK_TOKEN)

  @property
  def no_loss_ids(self) -> frozenset[int]:
    """Ids never trained on: `<pad>` and the three VLM tokens."""
    return frozenset([self.pad_id, *(self.token_id(t) for t in VLM_TOKENS)])

  # --- encoding -------------------------------------------------------------

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS/EOS."""
    return self.encode_parts([text])[0]

  def encode_parts(self, parts: Sequence[str]) -> tuple[list[int], list[int]]:
    """Encodes `"".join(parts)` and says which part each id came from.

    The ids are those of the joined string, except that a text run crossing
    a part boundary is cut there (so no id straddles two parts). Boundaries
    right after a whitespace-swallowing token, as in the chat template, cut
    nothing, so there the ids equal `encode("".join(parts))`.

    Args:
      parts: consecutive pieces of one string.

    Returns:
      `(ids, owners)`: `owners[i]` is the index of the part that produced
      `ids[i]`.

    Raises:
      ValueError: an added token straddles a part boundary.
    """
    text = "".join(parts)
    if not text:
      return [], []
    # The dummy prefix of the whole string; the reference also maps literal
    # `▁` to a space first (both become `▁` in SentencePiece anyway).
    text = _SPIECE_UNDERLINE + text.replace(_SPIECE_UNDERLINE, " ")
    owner_of, cut_points = _part_boundaries(parts)
    items = self._strip(text, self._split(text))
    ids, owners = [], []
    for item in items:
      if item.start >= item.end:
        continue  # fully swallowed by a neighbouring token
      if item.token is not None:
        if owner_of(item.start) != owner_of(item.end - 1):
          raise ValueError(f"{item.token.content!r} straddles two parts")
        ids.append(item.token.id)
        owners.append(owner_of(item.start))
        continue
      # The reference encodes a run that starts with a space behind `<unk>`
      # and drops those pieces again; without a dummy prefix that equals
      # encoding the run itself (no piece joins `>` to a `▁`).
      for start, end in _cut(item.start, item.end, cut_points):
        piece_ids = self._sp_cont.encode(text[start:end])
        ids.extend(piece_ids)
        owners.extend([owner_of(start)] * len(piece_ids))
    if (len(ids) > 1 and ids[0] == self._lone_prefix_id and
        ids[1] in self._by_id and self._by_id[ids[1]].absorbs_prefix):
      ids, owners = ids[1:], owners[1:]
    return ids, owners

  def _split(self, text: str) -> list[_Item]:
    """Cuts `text` into text runs and added tokens (leftmost-longest)."""
    items, pos = [], 0
    for match in self._pattern.finditer(text):
      if match.start() > pos:
        items.append(_Item(pos, match.start()))
      items.append(_Item(match.start(), match.end(),
                         self._by_content[match.group()]))
      pos = match.end()
    if pos < len(text):
      items.append(_Item(pos, len(text)))
    return items

  @staticmethod
  def _strip(text: str, items: list[_Item]) -> list[_Item]:
    """Lets rstrip/lstrip tokens swallow whitespace of the adjacent runs.

    Mirrors the reference's order: tokens left to right, each touching only
    its direct neighbours, with Python's notion of whitespace.
    """
    for i, item in enumerate(items):
      if item.token is None:
        continue
      if item.token.rstrip and i + 1 < len(items):
        right = items[i + 1]
        if right.token is None:
          run = text[right.start:right.end]
          right.start = right.end - len(run.lstrip())
      if item.token.lstrip and i > 0:
        left = items[i - 1]
        if left.token is None:
          run = text[left.start:left.end]
          left.end = left.start + len(run.rstrip())
    return items

  # --- decoding -------------------------------------------------------------

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False
             ) -> str:
    """Text of `ids`.

    Args:
      ids: token ids (a list or a 1-D integer array).
      skip_special_tokens: drop every added token (chat, pad, VLM, control)
        instead of writing its text.

    Raises:
      ValueError: an id is outside [0, vocab_size).
    """
    out, run = [], []
    run_is_start = True  # is the current run at the start of the string?

    def flush():
      if run:
        sp = self._sp_start if run_is_start else self._sp_cont
        out.append(sp.decode(run))
        run.clear()

    for token_id in (int(i) for i in ids):
      if not 0 <= token_id < self._vocab_size:
        raise ValueError(f"id {token_id} outside [0, {self._vocab_size})")
      token = self._by_id.get(token_id)
      if token is None:
        run.append(token_id)
        continue
      flush()
      run_is_start = False
      if not skip_special_tokens:
        out.append(token.content)
    flush()
    return "".join(out)


def _part_boundaries(parts: Sequence[str]):
  """Where the parts lie in the prefixed string (offset 0: the dummy `▁`).

  Returns:
    `(owner_of, cut_points)`: `owner_of(pos)` is the index of the part
    holding offset `pos` (the dummy `▁` goes with the first character of
    text); `cut_points` are the offsets where a new part begins.
  """
  ends = np.cumsum([len(p) for p in parts])

  def owner_of(pos: int) -> int:
    return int(np.searchsorted(ends, max(pos - 1, 0), side="right"))

  # A leading empty part (end 0) must not cut the dummy from the text.
  cut_points = sorted({int(e) + 1 for e in ends[:-1] if e > 0})
  return owner_of, cut_points


def _cut(start: int, end: int, cut_points: Sequence[int]
         ) -> list[tuple[int, int]]:
  """Splits [start, end) at the cut points strictly inside it."""
  inner = [p for p in cut_points if start < p < end]
  edges = [start, *inner, end]
  return list(zip(edges[:-1], edges[1:]))


@functools.lru_cache(maxsize=4)
def _load(path: str, reference_compatible: bool) -> Tokenizer:
  return Tokenizer(path or None, reference_compatible=reference_compatible)


def load(path: str = "", reference_compatible: bool = False) -> Tokenizer:
  """The tokenizer at `path` ("" = the bundled one), built once per process.

  Repeated calls with the same arguments return the same object. The pipeline
  calls this in each Grain worker, which builds its own instead of unpickling
  one.
  """
  return _load(path, reference_compatible)
