"""LoRA for bliperax: low-rank adapters on chosen Dense kernels, the base frozen.

  config.py    the `cfg.lora` block (enabled, targets, rank, alpha, dropout, base_dtype)
  plan.py      which kernels get adapters (regexes over kernel paths), their input
               axes, and which share an A (the parts of one fused HF Linear)
  adapters.py  fresh adapters (A uniform as PEFT draws it, B = 0) with logical axes
  apply.py     the unmerged forward (an interceptor on layers.Dense), `merge` for
               export, and `Lora`, the object the train step and exporters take
  count.py     the trainable fraction, from shapes alone
  io.py        a LoRA run's checkpoint (base, adapters, settings)
The train step (bliperax/train/step.py) differentiates the adapters only;
bliperax/convert/peft.py writes them in PEFT's format.

Why our own module and not a library. qwix (google/qwix 0.1.8, `LoraProvider` +
`apply_lora_to_model`) was tried on this model: it does run under `nn.scan` with
full remat and gives its adapters logical axes. It was not taken because
- it finds the weight of an intercepted `dot_general` by tracing the operand back
  through unary ops to a parameter, or failing that by shape; we know it exactly
  (the Dense layer's own kernel and `contract`);
- its adapters are parameters of the model (`kernel_lora_a` beside `kernel`), so the
  trained tree has to be cut out of the parameter tree by name for the optimizer and
  the export, and they take the base's dtype (a bf16 base gives bf16 adapters);
- every kernel gets its own A, while the HF checkpoint (and PEFT on it) fuses q/k/v
  and gate/up into one Linear with one A; exporting would need per-module ranks;
- it re-classes the model and must be told every method to wrap (`features`,
  `logit_parts`, ...), and its API is pre-1.0 under `qwix._src`.
The merged form (W + s·A·B computed before `model.apply`) was the other candidate:
functional and simple, but it cannot drop the adapters' input, and its backward
pass forms a full-size gradient of every adapted kernel (tokens·d·d flops and d·d
float32 per kernel, what LoRA exists to avoid). So: the adapters are a separate
pytree; `apply.attach` puts them beside their kernels in the tree given to
`model.apply`, and a `flax.linen.intercept_methods` interceptor on `layers.Dense`
adds ((dropout(x)·A)·B)·alpha/r to the layers that have them. The model code does
not change, `nn.scan` slices stacked adapters per layer, `nn.remat` recomputes them
like any parameter, pjit shards them by their logical axes (the kernel's input axes
for A, its output axes for B), and the gradient reaches the adapters alone.
"""
