"""Autoregressive decoding with the KV cache: prefill the prompt, then one token per step.

Prompts come left-padded (`bliperax.data.batch.collate(..., side="left")`), so every
row's next token lands in the same cache slot. Rows that emitted an end token are
filled with `pad_id` afterwards.

After the prefill the whole decode is one jitted `lax.while_loop` (`_decode_loop`) that
stops when every row has ended, so there is no host round trip and no dispatch per
token. A streaming callback (`on_token`) does not change that: the loop hands each
step's tokens to the host through a host callback (`_host_call`) and carries on; the
callback's return value can stop the decode.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

try:  # recent JAX releases (an experimental API)
  from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover
  _buffer_callback = None

from bliperax.data import batch_spec
from bliperax.models import phi3
from bliperax.models.config import XGenMMConfig
from bliperax.models.xgenmm import XGenMM

EOS_IDS = (32007, 32000)  # <|end|>, <|endoftext|> (bliperax/DESIGN.md §5)
PAD_ID = 32011

# A streaming callback is whatever the caller passes, but the compiled loop can only
# call one fixed host function: `_deliver` finds the caller's callback by the id the
# loop carries as an operand. An entry lives exactly as long as its generate call.
_STREAMS: Dict[int, "_Stream"] = {}
_STREAM_IDS = itertools.count(1)


@dataclasses.dataclass
class _Stream:
  on_token: Callable[[int, np.ndarray], Optional[bool]]
  stopped: bool = False
  error: Optional[BaseException] = None


def _deliver(packed: np.ndarray) -> np.bool_:
  """Host side of the loop's callback: packed int32[2 + B] = (stream id, step, the
  step's tokens). Calls on_token; True stops the decode."""
  stream = _STREAMS[int(packed[0])]
  if not stream.stopped:
    try:
      stream.stopped = bool(stream.on_token(int(packed[1]), packed[2:]))
    except BaseException as e:  # pylint: disable=broad-except  # re-raised by generate()
      stream.error, stream.stopped = e, True
  return np.bool_(stream.stopped)


def _deliver_in_place(ctx, halt, packed) -> None:
  """`_deliver` as a buffer_callback: reads the loop's buffer, writes `halt` in place."""
  del ctx
  np.asarray(halt)[...] = _deliver(np.asarray(packed).copy())  # the buffer is XLA's


def _host_call(packed: jax.Array) -> jax.Array:
  """bool[]: `_deliver(packed)` from inside the compiled loop.

  On CPU through buffer_callback, which hands the callback XLA's own host buffers.
  io_callback first wraps its operands into jax Arrays (`jax.device_put`), Python work
  that cost 0.4-0.5 ms a token on a 2-core host, ~12% of a `small` decode step; the
  buffer callback costs too little to measure there. Elsewhere (accelerator buffers;
  JAX releases without buffer_callback) through an ordered io_callback. Either way
  the calls come in step order: each step's call feeds the loop's condition.
  """
  out = jax.ShapeDtypeStruct((), jnp.bool_)
  if _buffer_callback is not None and jax.default_backend() == "cpu":
    return _buffer_callback(_deliver_in_place, out, has_side_effect=True)(packed)
  return io_callback(lambda p: _deliver(np.asarray(p)), out, packed, ordered=True)


@functools.lru_cache(maxsize=64)
def _cache_shapes(cfg: XGenMMConfig, batch: int, length: int):
  """The cache's ShapeDtypeStructs. Cached: tracing the model for them took longer
  than a small model's whole prefill, on every generate call."""
  model = XGenMM(cfg, decode=True)
  ids = jnp.zeros((batch, length), jnp.int32)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids + 1)["cache"])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_cache(cfg: XGenMMConfig, batch: int, length: int) -> dict:
  """Zeroed KV cache for `batch` rows of `length` slots (one dispatch: zeroing leaf by
  leaf cost ~0.15 ms per array, 5 ms a call for 8 layers)."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(cfg, batch, length))


def _apply(cfg: XGenMMConfig, params, cache, inputs):
  """One cached forward: (last position's logits float32[B, V], the updated cache).

  The head runs at the last position only: XLA does not move a slice of the logits
  through their product, so a prefill of T tokens would compute (and hold) [B, T, V]
  logits to keep one row of each (a third of a small model's prefill time).
  """
  model = XGenMM(cfg, decode=True)
  hidden, state = model.apply({"params": params, "cache": cache}, **inputs,
                              method=XGenMM.features, mutable=["cache"])
  logits = model.apply({"params": params}, hidden[:, -1:], method=XGenMM.logits)
  return logits[:, 0], state["cache"]


_forward = jax.jit(_apply, static_argnums=(0,), donate_argnums=(2,))


def fuses_projections() -> bool:
  """Whether the decode loop joins q|k|v and gate|up (models/phi3.fuse_projections).

  On CPU only, where it was measured: a fixed cost per product dominates the small
  matrix-vector products of decoding. The joined kernels are a copy of most of the
  decoder's weights for the duration of the loop, which on a GPU or TPU would cost
  device memory (~5 GB for the 4B model in bfloat16) for an unmeasured gain.
  """
  return jax.default_backend() == "cpu"


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9, 10, 11, 12, 13))
def _decode_loop(cfg: XGenMMConfig, params, cache, logits, position, rng, stream_id,
                 steps: int, temperature: float, top_k: int, top_p: float, eos_ids: tuple,
                 pad_id: int, stream: bool) -> jax.Array:
  """Tokens int32[B, steps] from the prefill's logits, decoded on the device.

  Step i selects a token from the logits (key fold_in(rng, i)); with `stream` it hands
  (i, tokens) to the host callback registered under `stream_id`, which may halt the
  loop; then, unless it was the last step, every row has ended or the loop was
  halted, it runs the cached forward on the token. Rows that ended get `pad_id`.
  """
  b = logits.shape[0]
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  if fuses_projections() and steps > 1:  # one step runs no forward: nothing to join for
    params = {**params, "lm": {**params["lm"],
                               "decoder": phi3.fuse_projections(params["lm"]["decoder"])}}

  def select(logits, step, finished):
    key = None if rng is None else jax.random.fold_in(rng, step)
    token = select_token(logits, key, temperature, top_k, top_p).astype(jnp.int32)
    return jnp.where(finished, pad_id, token)

  def emit(step, token, out):
    halt = jnp.bool_(False)
    if stream:
      halt = _host_call(jnp.concatenate([jnp.stack([stream_id, step]), token]))
    return out.at[:, step].set(token), halt

  def cond(state):
    step, _, _, _, finished, halted, _ = state
    return (step < steps - 1) & ~jnp.all(finished) & ~halted

  def body(state):
    step, logits, cache, position, finished, _, out = state
    token = select(logits, step, finished)
    out, halted = emit(step, token, out)
    finished = finished | jnp.isin(token, eos)
    position = position + 1
    logits, cache = _apply(cfg, params, cache, dict(
        tokens=token[:, None], positions=position[:, None],
        segment_ids=jnp.ones((b, 1), jnp.int32)))
    return step + 1, logits, cache, position, finished, halted, out

  out = jnp.full((b, steps), pad_id, jnp.int32)
  state = (jnp.int32(0), logits, cache, position, jnp.zeros((b,), bool), jnp.bool_(False),
           out)
  step, logits, _, _, finished, halted, out = jax.lax.while_loop(cond, body, state)
  # The last step's token needs no forward after it; none is due if every row has
  # ended (it would be all pad) or the host halted the loop.
  return jax.lax.cond(halted | jnp.all(finished), lambda out: out,
                      lambda out: emit(step, select(logits, step, finished), out)[0], out)


def greedy_token(logits: jax.Array) -> jax.Array:
  """int32[B]: jnp.argmax(logits, -1) exactly (first maximum; first NaN if any).

  As two plain reductions (the maximum, then the least index holding it): XLA's CPU
  argmax is a variadic (value, index) reduction that took ~150 us over a 32k-wide
  row, this ~30 us, about 1% of a small model's decoded token.
  """
  top = jnp.max(logits, axis=-1, keepdims=True)
  hit = (logits == top) | jnp.isnan(logits)
  index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


def select_token(logits: jax.Array, rng: Optional[jax.Array], temperature: float,
                 top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Greedy (temperature 0) or sampled next token from logits float32[B, V]."""
  if temperature <= 0:
    return greedy_token(logits)
  logits = logits / temperature
  if top_k:
    kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep the smallest prefix whose mass reaches top_p (always the top token)
    drop_sorted = (cum - jax.nn.softmax(sorted_logits, axis=-1)) >= top_p
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
        drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def check_new_tokens(cfg: XGenMMConfig, prompt_positions: int, max_new_tokens: int) -> None:
  """Raises ValueError unless 1 <= max_new_tokens and the positions stay in range.

  `prompt_positions`: positions the longest prompt row uses (its last position + 1).
  Past `max_positions` the rotary tables have no entry: refuse rather than decode
  garbage (and before allocating a cache for it).
  """
  room = cfg.text.max_positions - prompt_positions
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
  if max_new_tokens > room:
    raise ValueError(f"max_new_tokens {max_new_tokens} with a prompt of {prompt_positions} "
                     f"positions runs past the model's max_positions "
                     f"{cfg.text.max_positions}: at most {max(room, 0)} new tokens fit")


def generate(params, cfg: XGenMMConfig, prompt: dict, max_new_tokens: int,
             eos_ids: Sequence[int] = EOS_IDS, pad_id: int = PAD_ID,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             rng: Optional[jax.Array] = None,
             on_token: Optional[Callable[[int, np.ndarray], Optional[bool]]] = None
             ) -> np.ndarray:
  """Decodes up to `max_new_tokens` after a left-padded prompt batch.

  Args:
    params: model parameters.
    prompt: collated batch (tokens, positions, segment_ids [B, T], and the vision
      inputs crops / group_index / group_mask / vision_slots, or without them for text).
    on_token: called on the host as on_token(step, tokens int32[B]) with every step's
      tokens, in order, while the device loop goes on; returning True stops the
      decode after that step. An exception it raises stops the decode and is
      re-raised here.
  Returns:
    int32[B, max_new_tokens]; after a row's end token (and after an early stop once
    every row has ended, or on_token stopped it), `pad_id`.
  Raises:
    ValueError: max_new_tokens < 1, or the prompt plus max_new_tokens would run past
      the model's `max_positions`; sampling without an rng.
  """
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs an rng")
  tokens = np.asarray(prompt["tokens"])
  b, t = tokens.shape
  check_new_tokens(cfg, int(np.max(prompt["positions"])) + 1, max_new_tokens)
  cache = init_cache(cfg, b, t + max_new_tokens)
  keys = batch_spec.MODEL_KEYS
  if "crop_valid" in prompt and not np.any(prompt["crop_valid"]):
    keys = ("tokens", "positions", "segment_ids")  # text only: no ViT pass over padding
  inputs = {k: jnp.asarray(prompt[k]) for k in keys if k in prompt}
  logits, cache = _forward(cfg, params, cache, inputs)
  position = jnp.asarray(prompt["positions"])[:, -1]
  stream_id = next(_STREAM_IDS)
  if on_token is not None:
    _STREAMS[stream_id] = _Stream(on_token)
  try:
    out = _decode_loop(cfg, params, cache, logits, position, rng, jnp.int32(stream_id),
                       max_new_tokens, float(temperature), int(top_k), float(top_p),
                       tuple(int(e) for e in eos_ids), int(pad_id), on_token is not None)
    out = np.asarray(out)  # waits for the loop, and so for every callback
  finally:
    stream = _STREAMS.pop(stream_id, None)
  if stream is not None and stream.error is not None:
    raise stream.error
  return out
