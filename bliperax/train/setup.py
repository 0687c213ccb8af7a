"""The training setup, built once: config -> mesh -> model, optimizer, shapes, shardings -> step.

The trainer, `tools/bench_train_step.py`, `tools/aot_compile.py` and the tests all go
through `TrainSetup.build` and its methods, so the sequence (mesh, abstract state
and its shardings, sharded init, global batch, jit with explicit shardings, lower and
compile) exists once. Nothing is allocated until `init_state` is called.

With `cfg.lora.enabled` (bliperax/lora/config.py) the state is a LoraTrainState: the
base parameters frozen (optionally stored in bf16), the optimizer built over the
adapters alone, and `inference_params` merges them for evaluation. With
`cfg.dpo.enabled` (bliperax/train/dpo_config.py) the step is the DPO step
(bliperax/train/dpo_step.py) on pair batches, and without LoRA the state carries the
frozen reference parameters (a DpoTrainState).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from bliperax import sharding
from bliperax.configs import model_config
from bliperax.data import batch_spec
from bliperax.lora import adapters as lora_adapters
from bliperax.lora import config as lora_config
from bliperax.lora.apply import Lora
from bliperax.models import xgenmm
from bliperax.models.config import XGenMMConfig
from bliperax.train import checkpoint as ckpt_lib
from bliperax.train import dpo_config
from bliperax.train import dpo_step
from bliperax.train import optim
from bliperax.train.step import (TrainState, init_lora_state, init_state, model_params,
                                 train_step)


def rules_from(cfg: ml_collections.ConfigDict) -> sharding.Rules:
  """The config's logical -> mesh axis rules (`cfg.rules`; empty: the defaults)."""
  rules = cfg.get("rules")
  if not rules:
    return sharding.DEFAULT_RULES
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in rules)


def vision_frozen(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the optimizer's freeze patterns cover the vision tower."""
  return any(re.search(p, "vision/layers/x") for p in cfg.optim.get("freeze", ()))


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything the train step needs, for one config on one mesh.

  Attributes:
    cfg: the experiment config.
    mesh: the device mesh (axes data / fsdp / tensor).
    model_cfg: the model's shapes and numerics.
    rules: logical -> mesh axis rules.
    model: the VLM module (vision frozen per the optimizer's freeze patterns).
    tx: the optax optimizer.
    init_fn: rng -> boxed TrainState (logical axis names on every array).
    state_shardings: NamedShardings of the TrainState.
    abstract_state: ShapeDtypeStructs of the TrainState, with their shardings.
    step_fn: (state, batch) -> (state, metrics), not yet jitted.
    boxed_params: ShapeDtypeStructs of the model's parameters, boxed with their
      logical axis names (the tree `state_from_params` takes, unboxed).
    lora: the adapters' plan and scale when the config trains LoRA, else None.
  """
  cfg: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  model_cfg: XGenMMConfig
  rules: sharding.Rules
  model: xgenmm.XGenMM
  tx: optax.GradientTransformation
  init_fn: Callable[[jax.Array], TrainState]
  state_shardings: TrainState
  abstract_state: TrainState
  step_fn: Callable[..., Any]
  boxed_params: Any = None
  lora: Optional[Lora] = None

  @classmethod
  def build(cls, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> "TrainSetup":
    """Model, optimizer, abstract state and shardings (nothing allocated)."""
    model_cfg = model_config(cfg)
    rules = rules_from(cfg)
    model = xgenmm.XGenMM(model_cfg, freeze_vision=vision_frozen(cfg))
    dummy = xgenmm.dummy_inputs(model_cfg, batch=1, length=cfg.train.seq_len)
    # Jitted here, once per setup, and called by the init function: JAX caches its
    # trace, so the model's init is traced once (~0.5-0.8 s on 2 cores) for the
    # optimizer's tree below, the state's shapes and `init_state`'s lowering. All
    # three trace under this setup's mesh and axis rules (flax's rules are not part
    # of JAX's cache key, hence one jitted function per setup, never shared).
    init_params = jax.jit(functools.partial(model_params, model, dummy))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      boxed_params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    lora = (Lora.from_config(model_cfg, cfg.lora, boxed_params) if lora_config.enabled(cfg)
            else None)
    if lora is None:
      trained = nn.meta.unbox(boxed_params)
    else:  # the optimizer sees the adapters only; the base gets no state at all
      trained = nn.meta.unbox(lora_adapters.abstract(lora.plan, boxed_params, lora.rank))
    tx = optim.make(cfg.optim, trained, cfg.total_steps)
    dpo = dpo_step.Dpo.from_config(cfg.dpo) if dpo_config.enabled(cfg) else None
    if lora is None:
      # DPO without LoRA keeps the reference parameters in the state (dpo_step.py).
      init_fn = functools.partial(init_state if dpo is None else dpo_step.init_dpo_state,
                                  init_params=init_params, tx=tx)
    else:
      init_fn = functools.partial(init_lora_state, init_params=init_params, tx=tx, lora=lora,
                                  base_dtype=cfg.lora.get("base_dtype", ""))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      abstract_boxed = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    state_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
    abstract_state = ckpt_lib.abstract_with_shardings(nn.meta.unbox(abstract_boxed),
                                                      state_shardings)
    trainable = optim.trainable_mask(trained, cfg.optim.get("freeze", ()))
    extra = {} if lora is None else {"lora": lora, "dropout_seed": cfg.seed}
    if dpo is not None:
      extra["dpo"] = dpo
    step_fn = functools.partial(
        train_step if dpo is None else dpo_step.train_step, model=model, tx=tx,
        accum_steps=cfg.train.get("accum_steps", 1),
        lr_schedule=optim.schedule(cfg.optim, cfg.total_steps), trainable=trainable,
        loss_tokens_per_row=cfg.train.get("loss_tokens_per_row", 0), **extra)
    return cls(cfg=cfg, mesh=mesh, model_cfg=model_cfg, rules=rules, model=model, tx=tx,
               init_fn=init_fn, state_shardings=state_shardings,
               abstract_state=abstract_state, step_fn=step_fn, boxed_params=boxed_params,
               lora=lora)

  def inference_params(self, state: TrainState) -> Any:
    """The parameters the model is evaluated with: `state.params`, or with LoRA the
    base with the adapters merged in (float32 kernels)."""
    if self.lora is None:
      return state.params
    return self.lora.merge(state.params, state.adapters)

  @contextlib.contextmanager
  def context(self) -> Iterator[None]:
    """What tracing and running the step need: the mesh set and the axis rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def init_state(self, seed: int) -> TrainState:
    """A fresh state created directly in its shardings (call inside `context()`)."""
    return sharding.sharded_init(self.init_fn, self.mesh, self.rules,
                                 jax.random.PRNGKey(seed), shardings=self.state_shardings)

  def state_from_params(self, params: Any, seed: int) -> TrainState:
    """A fresh state around given parameters instead of drawn ones (call inside
    `context()`): the state `init_state(seed)` makes, with `params` in place of the
    model's random draw (and so as DPO's reference too; cast to LoRA's base dtype
    like the draw). The optimizer state starts as there and LoRA's adapters are
    drawn from `seed` as there.

    Why not draw and then replace: the model's init program (one compiled random
    draw per parameter tensor) cost 12 s to compile on 2 cores for the digits
    model and ~2.5 s to load from the compilation cache and run, per run.

    Args:
      params: unboxed tree of arrays with `boxed_params`'s structure and shapes (any
        float dtype: cast to the parameters' own), e.g. a converted checkpoint.
    """
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    def rebox(box, value):
      spec = box.unbox(apply_constraint=False) if is_box(box) else box
      value = value.astype(spec.dtype)
      return box.replace_boxed(value) if is_box(box) else value
    def init(rng, params):
      boxed = jax.tree.map(rebox, self.boxed_params, params, is_leaf=is_box)
      return self.init_fn(rng, init_params=lambda _: boxed)
    placed = jax.tree.map(jax.device_put, params, self.state_shardings.params)
    state = jax.jit(init, out_shardings=self.state_shardings)(jax.random.PRNGKey(seed), placed)
    return sharding.strip_boxes(state)

  def global_batch(self, local: Mapping[str, np.ndarray]) -> Dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the batch axes."""
    return sharding.global_batch(local, self.mesh)

  def abstract_batch(self, limits: batch_spec.Limits) -> Dict[str, jax.ShapeDtypeStruct]:
    """The global training batch of these row limits, sharded, without any data."""
    return batch_spec.abstract(self.cfg.train.global_batch, limits,
                               batch_spec.VisionDims.of(self.model_cfg),
                               batch_spec.TRAIN_KEYS,
                               functools.partial(sharding.batch_sharding, self.mesh))

  def jit_step(self, batch_example: Mapping[str, Any]):
    """The step jitted with explicit in/out shardings; the state is donated."""
    batch_shardings = {k: sharding.batch_sharding(self.mesh, np.ndim(v))
                       for k, v in batch_example.items()}
    return jax.jit(self.step_fn,
                   in_shardings=(self.state_shardings, batch_shardings),
                   out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=(0,))

  def compile_step(self, batch: Mapping[str, Any]):
    """The step lowered for `batch` (global arrays or ShapeDtypeStructs) and compiled.

    Lowered from the abstract state, so no state needs to exist yet (AOT compiles for
    devices this host does not have). Call inside `context()`.
    """
    return self.jit_step(batch).lower(self.abstract_state, batch).compile()
