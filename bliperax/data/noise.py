r"""Diffusion-style image noise: the forward process q(x_t | x) of a denoising diffusion model.

  x_t = sqrt(ᾱ)·x + sqrt(1 − ᾱ)·ε,   ε ~ N(0, I)

applied to model-input crops (float32 in [−1, 1], the range diffusion models noise; uint8
pixel crops are normalised first, bliperax/data/pixels.py).
`tools/make_preferences.py` asks the model about images noised this way: its answers
are the paper's extra rejected responses for DPO.

The noise level ℓ ∈ [0, 1] is the fraction of the forward chain, ℓ = t / T, and a
schedule maps it to ᾱ:

  cosine  ᾱ(ℓ) = f(ℓ) / f(0),  f(ℓ) = cos²((ℓ + s) / (1 + s) · π/2),  s = 0.008
          (Nichol & Dhariwal 2021, "Improved DDPM"): ᾱ(0) = 1, ᾱ(1) = 0 (to float
          round-off), ᾱ(0.5) ≈ 0.494: signal and noise of about equal power.
  linear  ᾱ_t = Π_{s ≤ t} (1 − β_s) with β rising linearly from 1e-4 to 0.02 over
          T = 1000 steps (Ho et al. 2020, "DDPM"); t = round(ℓ·T): ᾱ(0) = 1,
          ᾱ(1) ≈ 4.0e-5, ᾱ(0.5) ≈ 0.078 (this schedule destroys the image early).

ℓ = 0 returns the crops unchanged; ℓ = 1 returns (almost) pure N(0, 1) noise.
Nothing is clipped: the model sees x_t exactly, as a diffusion model's denoiser would.
"""
from __future__ import annotations

import math

import numpy as np

from bliperax.data import pixels

SCHEDULES = ("cosine", "linear")
STEPS = 1000  # T of the linear schedule (DDPM's)
_COSINE_OFFSET = 0.008  # s, which keeps β small near ℓ = 0
_LINEAR_BETAS = (1e-4, 0.02)


def alpha_bar(level: float, schedule: str = "cosine") -> float:
  """ᾱ, the signal's share of the variance at noise level `level` ∈ [0, 1].

  Raises:
    ValueError: a level outside [0, 1] or an unknown schedule.
  """
  level = float(level)
  if not 0.0 <= level <= 1.0:
    raise ValueError(f"noise level must be in [0, 1], got {level}")
  if schedule == "cosine":
    f = lambda u: math.cos((u + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
    return min(f(level) / f(0.0), 1.0)
  if schedule == "linear":
    betas = np.linspace(*_LINEAR_BETAS, STEPS, dtype=np.float64)
    return float(np.prod(1.0 - betas[:round(level * STEPS)]))
  raise ValueError(f"unknown noise schedule {schedule!r} (known: {', '.join(SCHEDULES)})")


def add_noise(x: np.ndarray, level: float, rng: np.random.Generator,
              schedule: str = "cosine") -> np.ndarray:
  """x_t for x float32[...] (crops [C, S, S, 3] in [−1, 1], or uint8 pixels, normalised
  first); ε drawn from `rng`.

  Level 0 returns a copy of x bit for bit (ᾱ = 1 exactly), still drawing ε, so a
  generator's later draws do not depend on the level.
  """
  a = alpha_bar(level, schedule)
  if x.dtype == np.uint8:  # pixels, not yet in the model's range
    x = pixels.normalize(x)
  eps = rng.standard_normal(np.shape(x), dtype=np.float32)
  out = np.float32(math.sqrt(a)) * np.asarray(x, np.float32) + np.float32(
      math.sqrt(1.0 - a)) * eps
  return out.astype(np.float32)


def sample_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of the input's `index`-th sample: noise depends on (seed, index) only,
  never on batching, --limit or the other samples."""
  return np.random.default_rng([int(seed), int(index)])
