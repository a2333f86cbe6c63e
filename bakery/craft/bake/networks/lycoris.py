"""LyCORIS LoHa, LoKr, IA3 and Diag-OFT files applied by our own code (diffusers' `load_lora_weights`
refuses them; DyLoRA files are plain LoRA files, which diffusers loads), and plain LoRA files for a family whose
diffusers loader reads no kohya names.

ΔW at weight 1, as kohya, LyCORIS (`lycoris/functional/loha.py`, `lokr.py`) and ComfyUI
(`comfy/weight_adapter/loha.py`, `lokr.py`) compute it from the file's tensors:

- LoRA/LoCon: `lora_up @ lora_down * alpha/rank`, rank = `lora_down.shape[0]`.

- LoHa: `(w1_a @ w1_b) * (w2_a @ w2_b) * alpha/rank`, rank = `hada_w1_b.shape[0]`; the Tucker form
  (`hada_t1`/`hada_t2`, convs) rebuilds each factor as `einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)`.
- LoKr: `kron(w1, w2)`, each factor either full (`lokr_w1`) or a product (`lokr_w1_a @ lokr_w1_b`,
  `lokr_w2_a @ lokr_w2_b`, or Tucker with `lokr_t2`); scale `alpha/rank` where a factor is a product
  (rank = its `_b.shape[0]`), 1 where both are full (our files carry peft's scale in `lokr_w2` there).

- IA3 (`weight`, `on_input`): `W0 * w`, w along the output rows (on_input 0) or the input columns (1),
  as A1111 (network_ia3.py) and LyCORIS (`modules/ia3.py`) compute it.
- Diag-OFT (`oft_blocks` (n, s, s), `alpha` = the norm constraint, 0 = none): `(R - I) W0` blockwise,
  R = (I + Q)(I - Q)^-1 with Q = blocks - blocksᵀ, as ComfyUI (`weight_adapter/oft.py`) and LyCORIS do.
  The two depend on W0: at weight w both give W0 + w * ΔW, as every reader applies them.

ΔW is reshaped to the module's weight (convs: `(out, in * kh * kw)` -> `(out, in, kh, kw)`). The network
is merged into the model's weights; the original weights are kept (on the CPU) so that any weight is one
re-merge (`W0 + weight * ΔW`, weight 0 gives back W0 exactly) and unloading restores them.
Module names: kohya_lora's mapping (`find_targets` + `module_key`), the one the bake writes with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from bakery.craft.bake.networks import kohya_lora as K

if TYPE_CHECKING:
    import torch

SUFFIXES = ("hada_", "lokr_", "oft_blocks", "on_input")  # tensor names of the networks this module applies


def is_lycoris(keys: Iterable[str]) -> bool:
    """A file holding LoHa, LoKr, IA3 or Diag-OFT tensors (its tensor names after the module name)."""
    return any(k.split(".", 1)[-1].startswith(SUFFIXES) for k in keys)


def by_module(tensors: Mapping[str, "torch.Tensor"]) -> dict[str, dict[str, "torch.Tensor"]]:
    """`{kohya module name: {tensor name: tensor}}` (`lora_unet_x.hada_w1_a` -> `["lora_unet_x"]["hada_w1_a"]`)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, suffix = key.split(".", 1)
        out.setdefault(name, {})[suffix] = tensor
    return out


def _tucker(t: "torch.Tensor", w_a: "torch.Tensor", w_b: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)


def _alpha(f: Mapping[str, "torch.Tensor"], rank: int) -> float:
    return float(f["alpha"]) / rank if "alpha" in f else 1.0


def loha_delta(f: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
    """LoHa ΔW at weight 1 (unshaped: 2-D, or 4-D in the Tucker form)."""
    if "hada_t1" in f:
        w1 = _tucker(f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"])
        w2 = _tucker(f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"])
    else:
        w1, w2 = f["hada_w1_a"] @ f["hada_w1_b"], f["hada_w2_a"] @ f["hada_w2_b"]
    return w1 * w2 * _alpha(f, f["hada_w1_b"].shape[0])


def lora_delta(f: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
    """LoRA/LoCon ΔW at weight 1: `up @ down * alpha/rank` (2-D; convs flattened to (out, in * kh * kw))."""
    down, up = f["lora_down.weight"], f["lora_up.weight"]
    return (up.flatten(1) @ down.flatten(1)) * _alpha(f, down.shape[0])


def lokr_delta(f: Mapping[str, "torch.Tensor"]) -> "torch.Tensor":
    """LoKr ΔW at weight 1 (unshaped)."""
    import torch

    rank = None
    if "lokr_w1" in f:
        w1 = f["lokr_w1"]
    else:
        w1, rank = f["lokr_w1_a"] @ f["lokr_w1_b"], f["lokr_w1_b"].shape[0]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    else:
        w2 = _tucker(f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"]) if "lokr_t2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        rank = f["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = _alpha(f, rank) if rank is not None else 1.0
    return torch.kron(w1, w2.contiguous()) * scale


def ia3_delta(f: Mapping[str, "torch.Tensor"], w0: "torch.Tensor") -> "torch.Tensor":
    """IA3 ΔW at weight 1: the original weight scaled along its output rows or (on_input) its input columns."""
    w = f["weight"].reshape(-1)
    if float(f["on_input"]):
        return w0 * w.reshape(1, -1, *([1] * (w0.dim() - 2)))
    return w0 * w.reshape(-1, *([1] * (w0.dim() - 1)))


def oft_delta(f: Mapping[str, "torch.Tensor"], w0: "torch.Tensor") -> "torch.Tensor":
    """Diag-OFT ΔW at weight 1: (R - I) applied blockwise to the original weight's output rows."""
    import torch

    blocks = f["oft_blocks"]
    n, size, _ = blocks.shape
    q = blocks - blocks.transpose(1, 2)
    constraint = float(f["alpha"]) if "alpha" in f else 0.0
    if constraint > 0:
        norm = torch.norm(q) + 1e-8
        if norm > constraint:
            q = q * constraint / norm
    eye = torch.eye(size, device=blocks.device, dtype=blocks.dtype)
    r = (eye + q) @ torch.linalg.inv(eye - q)
    rest = w0.shape[1:]
    return torch.einsum("k n m, k n ... -> k m ...", r - eye, w0.reshape(n, size, *rest)).reshape(w0.shape)


def delta_weight(factors: Mapping[str, "torch.Tensor"], shape: Iterable[int],
                 w0: "torch.Tensor | None" = None) -> "torch.Tensor":
    """ΔW at weight 1 of one module, in fp32, in the shape of the module's weight (`w0`: the original
    weight, which IA3 and Diag-OFT scale or rotate)."""
    f = {k: v.float() for k, v in factors.items()}
    if "lora_down.weight" in f and "dora_scale" not in f:
        delta = lora_delta(f)
    elif any(k.startswith("hada_") for k in f):
        delta = loha_delta(f)
    elif any(k.startswith("lokr_") for k in f):
        delta = lokr_delta(f)
    elif w0 is not None and "on_input" in f:
        delta = ia3_delta(f, w0.float())
    elif w0 is not None and "oft_blocks" in f:
        delta = oft_delta(f, w0.float())
    else:
        raise ValueError(f"not a LoRA, LoHa, LoKr, IA3 or Diag-OFT module (or no original weight): tensors {sorted(f)}")
    return delta.reshape(tuple(shape))


def kohya_modules(models: Mapping[str, Any], architecture: str) -> dict[str, Any]:
    """`{kohya module name: torch module}` for the denoiser and text encoders of a pipeline, named as the
    bake names them (the family's targets: every layer a LoRA/LoCon/LoHa/LoKr may cover, in the names the family's
    kohya files use: SDXL's UNet in sgm layout, a DiT's original paths).

    `models`: `{"unet": denoiser, "te": [text encoder(s)]}`.
    """
    from bakery.craft.bake.bases.load import family_for

    family = family_for(architecture)
    spec = K.NetworkSpec("loha")  # covers the convs too: the widest choice of layers
    out: dict[str, Any] = {}
    for prefix, model, kind in family.network_parts(models["unet"], models["te"]):
        targets = family.targets(model, kind, spec)
        for path in targets.all:
            out[K.module_key(prefix, path, targets)] = model.get_submodule(path)
    return out


class MergedNetwork:
    """A LoRA/LoHa/LoKr/IA3/Diag-OFT file merged into the models' weights at a settable weight; `remove()` restores
    them."""

    def __init__(self, tensors: Mapping[str, "torch.Tensor"], modules: Mapping[str, Any]):
        groups = by_module(tensors)
        unknown = sorted(set(groups) - set(modules))
        if unknown:
            raise ValueError(f"{len(unknown)} module(s) of the file are not in the base model, e.g. {unknown[0]}")
        # (module, original weight kept on the CPU: no second copy of the model in GPU memory, factors on its device)
        self.parts = []
        for name, factors in groups.items():
            module = modules[name]
            w = module.weight
            self.parts.append((module, w.detach().to("cpu", copy=True), {k: v.to(w.device) for k, v in factors.items()}))
        self.weight = 0.0

    def set_weight(self, weight: float) -> None:
        """W = W0 + weight * ΔW for every module (ΔW rebuilt from the factors in fp32)."""
        import torch

        with torch.no_grad():
            for module, w0, factors in self.parts:
                w0 = w0.to(module.weight.device)
                if weight == 0:
                    module.weight.copy_(w0)
                else:
                    delta = delta_weight(factors, w0.shape, w0)
                    module.weight.copy_((w0.float() + weight * delta).to(w0.dtype))
        self.weight = float(weight)

    def remove(self) -> None:
        self.set_weight(0.0)
        self.parts = []
