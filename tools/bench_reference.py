r"""The PyTorch reference's side of the side-by-side benchmark: one process, one JSON line.

  <reference venv>/bin/python tools/bench_reference.py --lavis=/tmp/lavis [--threads=N]

Runs the workload and protocol of `tools/bench_workload.py` through the public PyTorch
reference of xGen-MM: salesforce/LAVIS, branch `xgen-mm`, commit d699f7e ("Fixed a
couple typos in the initial commit"), folder `open_flamingo/`. The reference's own
classes and functions are what is timed; they are loaded from the checkout given by
--lavis, never copied into this repository. This script runs in its own environment,
without JAX or bliperax; `tools/bench_side_by_side.py` runs it and
`tools/bench_process.py` (bliperax) alternately and compares them.

Setting up the reference (CPU only; nothing is downloaded at run time):

  # 1. the source at the commit the golden fixtures were made with, from any clone of
  #    salesforce/LAVIS (GitHub) that has the xgen-mm branch, exported outside the repo
  git -C <LAVIS clone> log --oneline -1 d699f7e    # "Fixed a couple typos in ..."
  mkdir -p /tmp/lavis && git -C <LAVIS clone> archive d699f7e | tar -x -C /tmp/lavis
  # 2. its environment: transformers 4.41.2, the version the released checkpoints were
  #    made with; torch 2.13.0 is this machine's local CPU wheel (another version means
  #    a CUDA build of several GB). No torchvision / open_clip: see below.
  python -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 transformers==4.41.2 einops einops-exts \
      pillow numpy
  # 3. run it (or let tools/bench_side_by_side.py run it)
  /tmp/refvenv/bin/python tools/bench_reference.py --lavis=/tmp/lavis
  (seen working with numpy 2.4.6, pillow 13.0.0, tokenizers 0.19.1, einops 0.8.2,
  einops-exts 0.0.4)

What runs, step by step (the reference's code path in brackets):
  build   SiglipVisionModel(config).vision_model, i.e. the SiglipVisionTransformer the
          reference takes from SigLIP [factory.create_model_and_transforms, 'google'],
          and Phi3ForCausalLM(config), random init, float32, from the workload's shapes;
          XGenMMPerceiver [src/xgenmm.py] around them with anyres on and patch sampling,
          initial tokenizer length 32012, pad 32011, decoder layers `model.layers`;
          its PerceiverResampler [src/helpers.py] rebuilt with the workload's depth,
          heads and head size (XGenMMPerceiver hard-codes 6 x 16 x 96 and exposes only
          the latent count); then what the factory does after construction: special
          token ids 32012-32014, `lang_model.config.vocab_size = 32015`,
          `set_trainable()` (everything but the ViT); `model.anyres_grids` in pixels as
          instruction_finetune.py sets it; AdamW over `group_params_by_weight_decay()`
          and a constant LR schedule [train/instruction_finetune.py].
  data    each image through `process_anyres_image` [train/any_res_data_utils.py] with
          the SigLIP transform of the factory (bicubic resize to 112, RGB, to tensor,
          normalise with mean = std = 0.5) -> the squashed base crop + a 2x2 grid = 5
          crops; batched as the SFT collator does ([B, 1, 5, 3, 112, 112], image sizes
          as PIL (width, height)); prompts as inference.ipynb does (nested lists,
          `process_images`). All batches are prepared inside build_s, as bench_process
          does.
  step    the body of `finetune_one_epoch` [train/train_utils.py] with the
          `SupervisedPrediction` loss [train/losses.py]: forward with labels -> loss,
          loss.item(), backward, clip_grad_norm_(model.parameters(), GRAD_CLIP),
          optimizer.step(), lr_scheduler.step(), zero_grad(set_to_none=True).
  decode  `XGenMMPerceiver.generate` (greedy, NEW_TOKENS new tokens, end token off,
          Hugging Face's default KV cache), inside torch.no_grad(); per-token host
          times from a StoppingCriteria that never stops.

Where this differs from the reference as released, and why:
  - Attention is "eager" everywhere: transformers 4.41.2's Phi-3 does not support SDPA
    (`_supports_sdpa = False`) and its SigLIP has only the eager path, so that is the
    default on CPU (the reference's other choice, flash-attention 2, needs CUDA). The
    factory loads Phi-3 with trust_remote_code (the Hub's modeling_phi3.py), which
    cannot be fetched offline; transformers' own Phi3ForCausalLM is the same model.
  - Single process: no DDP/FSDP wrapper, no autocast (precision fp32 -> `suppress`),
    no gradient checkpointing (all as the reference's fp32 single-GPU defaults).
  - AdamW uses the workload's betas/eps (the reference leaves torch's defaults); the
    reference's weight-decay grouping (decay on everything) is kept.
  - `open_flamingo/__init__.py` is not executed: it only re-exports the factory, whose
    module-level imports (torchvision, open_clip) pull in packages that need another
    torch build and that nothing timed here uses. `open_flamingo` is registered as a
    bare package pointing at the checkout instead, so `open_flamingo.src.*` and
    `open_flamingo.train.{any_res_data_utils,losses}` import unchanged.
  - The factory's SigLIP transform is torchvision's Compose; an equivalent with the
    same attributes the reference reads (`transforms[0].size`) and the same
    arithmetic (PIL bicubic resize, /255, (x - 0.5) / 0.5) stands in for it.

Threads: torch's default (one OpenMP thread per core) is what is measured. On a machine
busy with other work its threads wait on each other: seen here on 2 loaded cores,
decode 3.4 tok/s with 2 threads against 27 with --threads=1. Compare quiet runs only.

Fields of the JSON line (seconds unless named otherwise):
  import_s, build_s, first_step_s, step_median_s (steps 2..TRAIN_STEPS), step_s,
  final_loss, first_generate_s, process_done_unix (time.time() after the first
  generate), time_to_first_token_s and decode_tokens_per_s (warm, from per-token host
  times, tokens 2..N, the best of 2 runs), torch_version, transformers_version,
  torch_threads, cpus, attention, seq_len (expanded training length), workload.
"""
import argparse
import contextlib
import json
import os
import sys
import time
import types

_T_START = time.perf_counter()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
import transformers  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_workload as wl  # pylint: disable=g-import-not-at-top,wrong-import-position

WARM_GENERATIONS = 2
SPECIAL_TOKENS = {"<image>": wl.IMAGE_ID, "<image placeholder>": wl.IMAGE_ID + 1,
                  "<|endofchunk|>": wl.END_OF_CHUNK_ID}
INITIAL_TOKENIZER_LEN = wl.IMAGE_ID  # the Phi-3 tokenizer plus its added <pad>


def _parse_args():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lavis", required=True,
                      help="a checkout of salesforce/LAVIS, branch xgen-mm (commit d699f7e)")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads; 0 keeps torch's default")
  return parser.parse_args()


def import_reference(lavis: str) -> types.SimpleNamespace:
  """The reference's modules, imported from the checkout without its package __init__.

  `open_flamingo/__init__.py` imports the Hub-loading factory (torchvision, open_clip);
  registering the package by hand keeps every timed module's own imports as they are.
  """
  root = os.path.abspath(lavis)
  package_dir = os.path.join(root, "open_flamingo")
  if not os.path.isfile(os.path.join(package_dir, "src", "xgenmm.py")):
    sys.exit(f"--lavis={lavis}: no open_flamingo/src/xgenmm.py there")
  package = types.ModuleType("open_flamingo")
  package.__path__ = [package_dir]
  sys.modules["open_flamingo"] = package
  sys.path.insert(0, root)
  from open_flamingo.src import helpers, xgenmm  # pylint: disable=g-import-not-at-top
  from open_flamingo.train import any_res_data_utils, losses  # pylint: disable=g-import-not-at-top
  return types.SimpleNamespace(helpers=helpers, xgenmm=xgenmm, anyres=any_res_data_utils,
                               losses=losses)


class _Resize:
  """torchvision Resize((n, n), BICUBIC) on a PIL image; the reference reads `.size`."""

  def __init__(self, n: int):
    self.size = (n, n)

  def __call__(self, image: Image.Image) -> Image.Image:
    return image.resize(self.size[::-1], Image.BICUBIC)


class SiglipTransform:
  """The factory's SigLIP transform (its 'google' branch), without torchvision.

  Resize to n x n bicubic, convert to RGB, to a float CHW tensor in [0, 1], then
  normalise with mean = std = 0.5 in torchvision's order ((x - mean) / std).
  """

  def __init__(self, n: int):
    self.transforms = [_Resize(n)]

  def __call__(self, image: Image.Image) -> torch.Tensor:
    image = self.transforms[0](image)
    if image.mode != "RGB":
      image = image.convert("RGB")
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    return x.sub_(0.5).div_(0.5)


def _vision_encoder():
  """SigLIP's vision transformer (the module the factory takes as `model.vision_model`)."""
  v = wl.VISION
  config = transformers.SiglipVisionConfig(
      hidden_size=v["width"], intermediate_size=v["mlp_dim"],
      num_hidden_layers=v["depth"], num_attention_heads=v["num_heads"],
      image_size=v["image_size"], patch_size=v["patch_size"], layer_norm_eps=1e-6,
      hidden_act="gelu_pytorch_tanh")
  return transformers.SiglipVisionModel(config).vision_model


def _language_model():
  """Phi-3 with the workload's shapes, float32, as the released config spells it."""
  t = wl.TEXT
  config = transformers.Phi3Config(
      vocab_size=t["vocab_rows"], hidden_size=t["width"], intermediate_size=t["mlp_dim"],
      num_hidden_layers=t["depth"], num_attention_heads=t["num_heads"],
      num_key_value_heads=t["num_kv_heads"], max_position_embeddings=t["max_positions"],
      original_max_position_embeddings=t["max_positions"], rope_theta=t["rope_theta"],
      sliding_window=t["sliding_window"], rope_scaling=None, rms_norm_eps=1e-5,
      hidden_act="silu", resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
      bos_token_id=1, eos_token_id=32000, pad_token_id=wl.PAD_ID,
      tie_word_embeddings=False, torch_dtype="float32")
  assert config.hidden_size // config.num_attention_heads == t["head_dim"]
  return transformers.Phi3ForCausalLM(config)


def build_model(ref):
  """XGenMMPerceiver around random SigLIP and Phi-3, set up as the factory does."""
  vision_encoder = _vision_encoder()
  lang_model = _language_model()
  r = wl.RESAMPLER
  model = ref.xgenmm.XGenMMPerceiver(
      vision_encoder=vision_encoder, lang_model=lang_model,
      vis_feature_dim=vision_encoder.config.hidden_size,
      initial_tokenizer_len=INITIAL_TOKENIZER_LEN, pad_token_id=wl.PAD_ID,
      decoder_layers_attr_name="model.layers", gradient_checkpointing=False,
      image_aspect_ratio="anyres", anyres_patch_sampling=True,
      num_vision_tokens=r["num_latents"])
  # XGenMMPerceiver builds its resampler with the 4B shape (depth 6, 16 heads of 96);
  # the reference's own class again, with the workload's shape.
  model.vision_tokenizer = ref.helpers.PerceiverResampler(
      dim=vision_encoder.config.hidden_size, dim_inner=lang_model.config.hidden_size,
      depth=r["depth"], dim_head=r["head_dim"], heads=r["num_heads"],
      num_latents=r["num_latents"], ff_mult=r["ff_mult"])
  model.vision_tokenizer._use_gradient_checkpointing = False  # pylint: disable=protected-access
  # What create_model_and_transforms does after construction.
  assert list(model.special_tokens.values()) == list(SPECIAL_TOKENS)
  model.lang_model.config.vocab_size = INITIAL_TOKENIZER_LEN + len(SPECIAL_TOKENS)
  model.set_special_token_ids(SPECIAL_TOKENS)
  model.set_trainable()
  # instruction_finetune.py: the grids in pixels of the base size.
  model.anyres_grids = [[model.base_img_size * m, model.base_img_size * n]
                        for m, n in wl.ANYRES_GRIDS]
  return model


def build_optimizer(model):
  """AdamW over the reference's weight-decay groups, and its (constant) LR schedule."""
  with_wd, without_wd = model.group_params_by_weight_decay()
  optimizer = torch.optim.AdamW(
      [{"params": with_wd, "weight_decay": wl.WEIGHT_DECAY},
       {"params": without_wd, "weight_decay": 0.0}],
      lr=wl.LR, betas=wl.BETAS, eps=wl.EPS)
  scheduler = transformers.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=0)
  return optimizer, scheduler


def train_batch(ref, transform, model, rows) -> dict:
  """One SFT batch as the reference's dataset and collator lay it out.

  Per sample `process_anyres_image(...)[None]` ([1, 5, 3, S, S]); equal shapes are
  stacked to [B, 1, 5, 3, S, S]; rows are of equal length, so no padding is needed.
  """
  images, sizes = [], []
  for row in rows:
    image = Image.fromarray(row.image).convert("RGB")
    images.append(ref.anyres.process_anyres_image(image, transform, model.anyres_grids)[None])
    sizes.append(image.size)
  input_ids = torch.tensor([row.ids for row in rows], dtype=torch.long)
  return dict(images=torch.stack(images), image_size=sizes, input_ids=input_ids,
              attention_mask=input_ids.ne(wl.PAD_ID),
              labels=torch.tensor([row.labels for row in rows], dtype=torch.long))


def prompt_inputs(ref, transform, row) -> dict:
  """The generation inputs as inference.ipynb builds them (nested per-sample lists)."""
  image = Image.fromarray(row.image).convert("RGB")
  cfg = types.SimpleNamespace(image_aspect_ratio="anyres")
  pixels = ref.anyres.process_images([image], transform, cfg)  # [1, 5, 3, S, S]
  ids = torch.tensor([row.ids], dtype=torch.long)
  return dict(vision_x=[[pixels]], image_size=[[image.size]], lang_x=ids,
              attention_mask=torch.ones_like(ids))


def train_step(ref, model, optimizer, scheduler, batch) -> float:
  """The body of the reference's finetune_one_epoch for one batch; returns the loss."""
  tokenizer = types.SimpleNamespace(pad_token_id=wl.PAD_ID)  # all the loss reads
  loss = ref.losses.SupervisedPrediction()(
      model=model, tokenizer=tokenizer, images=batch["images"],
      image_size=batch["image_size"], input_ids=batch["input_ids"],
      attention_mask=batch["attention_mask"], labels=batch["labels"].clone(),
      autocast=contextlib.suppress)
  loss_value = loss.item()  # the reference logs it every step
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), wl.GRAD_CLIP)
  optimizer.step()
  scheduler.step()
  optimizer.zero_grad(set_to_none=True)
  return loss_value


class TokenClock(transformers.StoppingCriteria):
  """Records the host time each generated token arrives; never stops generation."""

  def __init__(self):
    self.stamps = []

  def __call__(self, input_ids, scores, **kwargs):
    self.stamps.append(time.perf_counter())
    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate(model, inputs, clock=None) -> torch.Tensor:
  """Greedy NEW_TOKENS through the reference's generate, the end token off."""
  extra = {}
  if clock is not None:
    extra["stopping_criteria"] = transformers.StoppingCriteriaList([clock])
  with torch.no_grad():
    out = model.generate(**inputs, do_sample=False, num_beams=1,
                         max_new_tokens=wl.NEW_TOKENS,
                         eos_token_id=None, pad_token_id=wl.PAD_ID, **extra)
  assert out.shape == (1, wl.NEW_TOKENS), out.shape
  return out


def warm_decode(model, inputs):
  """(time to first token, decode tokens/s) of the warm run with the best decode rate."""
  best = None
  for _ in range(WARM_GENERATIONS):
    clock = TokenClock()
    t0 = time.perf_counter()
    generate(model, inputs, clock)
    rate, _ = wl.decode_rate(clock.stamps)
    if best is None or rate > best[1]:
      best = (clock.stamps[0] - t0, rate)
  return best


def _expanded_length(model, batch) -> int:
  """Tokens per training row once <image> became its vision tokens."""
  crops = batch["images"].shape[2]
  return batch["input_ids"].shape[1] - 1 + crops * model.vision_tokenizer.num_tokens_per_media


def main():
  args = _parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  ref = import_reference(args.lavis)
  import_s = time.perf_counter() - _T_START

  t0 = time.perf_counter()
  torch.manual_seed(wl.SEED)
  model = build_model(ref)
  optimizer, scheduler = build_optimizer(model)
  transform = SiglipTransform(model.base_img_size)
  batches = [train_batch(ref, transform, model, wl.train_rows(i))
             for i in range(wl.TRAIN_STEPS)]
  build_s = time.perf_counter() - t0

  model.train()
  step_s, losses = [], []
  for batch in batches:
    t0 = time.perf_counter()
    losses.append(train_step(ref, model, optimizer, scheduler, batch))
    step_s.append(time.perf_counter() - t0)

  model.eval()
  prompt = prompt_inputs(ref, transform, wl.prompt_row())
  t0 = time.perf_counter()
  generate(model, prompt)
  first_generate_s = time.perf_counter() - t0
  process_done_unix = time.time()

  ttft, rate = warm_decode(model, prompt)
  print(json.dumps(dict(
      impl="reference", import_s=round(import_s, 2), build_s=round(build_s, 2),
      first_step_s=round(step_s[0], 3), step_median_s=round(wl.median(step_s[1:]), 4),
      step_s=[round(s, 4) for s in step_s], final_loss=round(losses[-1], 4),
      first_generate_s=round(first_generate_s, 3), process_done_unix=process_done_unix,
      time_to_first_token_s=round(ttft, 4), decode_tokens_per_s=round(rate, 1),
      seq_len=_expanded_length(model, batches[0]),
      attention=model.lang_model.config._attn_implementation,  # pylint: disable=protected-access
      torch_version=torch.__version__, transformers_version=transformers.__version__,
      torch_threads=torch.get_num_threads(), cpus=os.cpu_count(),
      reference="salesforce/LAVIS@d699f7e open_flamingo", workload=wl.summary())),
        flush=True)


if __name__ == "__main__":
  main()
