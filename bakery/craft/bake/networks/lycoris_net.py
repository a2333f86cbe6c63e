"""IA3, DyLoRA and Diag-OFT trained with LyCORIS's own modules (`lycoris-lora`, what kohya uses for them).

The modules are LyCORIS's (`lycoris.modules.ia3.IA3Module`, `dylora.DyLoraModule`,
`diag_oft.DiagOFTModule`): their parameters, initialisation, forward and tensor names. What this
module adds is kohya's naming (`kohya_lora.find_targets` + `module_key`, SDXL's UNet in sgm layout,
the text encoder's `text_model.` level), the same as every other network the bake writes, so the
files load where kohya's LyCORIS files load:

- IA3 (`{name}.weight`, `{name}.on_input`): LyCORIS's `ia3` preset layers, the attention's `to_k`/`to_v`
  and the feed-forward output (`ff.net.2`, scaled on its input); in the text encoder `k_proj`/`v_proj`
  and `mlp.fc2` (on its input). A1111's built-in networks (network_ia3.py) load them; ComfyUI has no
  IA3 loader (its comfy/weight_adapter has LoRA, LoHa, LoKr, GLoRA, OFT, BOFT only).
- DyLoRA (`{name}.lora_down.weight`, `.lora_up.weight`, `.alpha`): a plain LoRA file at the full
  rank (dim 64, alpha 32 by default), so every LoRA reader loads it. Trained in units of 4 ranks:
  each step every module trains one random unit on top of the ones below it (kohya's DyLoRA).
- Diag-OFT (`{name}.oft_blocks` (blocks, size, size), `.alpha` = the constraint, 0 = none): ComfyUI's
  OFTAdapter and A1111's network_oft.py load it. `dim` is LyCORIS's block size.

The modules hang under the model they wrap (`model.bakery_lycoris`), so `model.parameters()`,
`.train()`, `.eval()` and `.to()` reach them as they reach peft's adapters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bakery.craft.bake.networks import kohya_lora as K

if TYPE_CHECKING:
    import torch

LYCORIS_TYPES = ("ia3", "dylora", "diag-oft")
ATTR = "bakery_lycoris"  # the attribute of the wrapped model that holds its modules
IA3_LAYERS = {"unet": ("to_k", "to_v", "ff.net.2"), "te": ("k_proj", "v_proj", "mlp.fc2")}  # LyCORIS's ia3 preset
IA3_ON_INPUT = ("ff.net.2", "mlp.fc2")
DYLORA_UNIT = 4  # rules.md §12: DyLoRA unit 4


def is_lycoris_type(network_type: str) -> bool:
    return network_type in LYCORIS_TYPES


def find_targets(model: Any, kind: str, spec: K.NetworkSpec, sgm: bool = False) -> K.Targets:
    """The layers the network wraps: LoRA's (linear and 1x1 convs); IA3 only LyCORIS's ia3 preset layers."""
    return narrow_targets(K.find_targets(model, kind, spec, sgm=sgm), kind, spec)


def narrow_targets(targets: K.Targets, kind: str, spec: K.NetworkSpec) -> K.Targets:
    """LoRA's layers as the network takes them: all of them; IA3 only LyCORIS's ia3 preset layers."""
    if spec.network_type != "ia3":
        return targets
    names = IA3_LAYERS[kind]
    linear = [p for p in targets.linear if p.endswith(names)]
    return K.Targets(linear=linear, conv=[], renames={p: targets.renames[p] for p in linear if p in targets.renames})


def _dylora_class() -> type:
    from lycoris.modules.dylora import DyLoraModule

    class BakeryDyLora(DyLoraModule):
        """LyCORIS's DyLoRA with the rank of each step set from outside (the same rank in the forward and in
        a gradient-checkpointing recompute, and in a resumed bake), the full rank in eval mode, and
        kohya's scale: alpha/dim at the full rank, the rank the file's readers apply (LyCORIS 4.1 scales
        by alpha / number of units, 4x too strong for unit 4 against the file)."""

        step_units = 0  # units trained this step (1 .. block_count); 0 = all

        def get_weight(self, rank):
            units = math.ceil(rank / self.block_size) if rank else self.block_count
            b = units - 1  # LyCORIS: the units below b frozen, unit b trained
            down = torch_cat([d.data for d in self.down_list[:b]] + [self.down_list[b]])
            up = torch_cat([u.data for u in self.up_list[:b]] + [self.up_list[b]], dim=1)
            used = units * self.block_size
            return down, up, float(self.alpha) / self.lora_dim * math.sqrt(self.lora_dim / used)

        def get_random_rank_weight(self):
            units = self.step_units if self.training and self.step_units else self.block_count
            return self.get_weight(units * self.block_size)

        def forward(self, x, *args, **kwargs):
            import torch.nn.functional as F

            down, up, scale = self.get_random_rank_weight()
            h = self.op(x, down.view(down.shape[0], *self.shape[1:]), None, **self.kw_dict)
            if self.module_type == "linear":
                h = F.linear(h, up)
            else:
                h = F.conv2d(h, up[:, :, None, None])
            return self.org_forward(x, *args, **kwargs) + h * (scale * self.multiplier)

    return BakeryDyLora


def torch_cat(tensors: list[Any], dim: int = 0) -> Any:
    import torch

    return torch.cat(tensors, dim=dim)


def make_module(name: str, module: Any, path: str, spec: K.NetworkSpec) -> Any:
    """LyCORIS's module of `spec.network_type` wrapping `module` (named `name` in the file)."""
    if spec.network_type == "ia3":
        from lycoris.modules.ia3 import IA3Module

        return IA3Module(name, module, 1.0, train_on_input=path.endswith(IA3_ON_INPUT))
    if spec.network_type == "dylora":
        return _dylora_class()(name, module, 1.0, lora_dim=spec.dim, alpha=spec.alpha, block_size=DYLORA_UNIT)
    if spec.network_type == "diag-oft":
        from lycoris.modules.diag_oft import DiagOFTModule

        return DiagOFTModule(name, module, 1.0, lora_dim=spec.dim, constraint=0.0)
    raise ValueError(f"not a LyCORIS network type: {spec.network_type!r}")


def attach(model: Any, prefix: str, targets: K.Targets, spec: K.NetworkSpec) -> Any:
    """Wrap the targets of `model` with LyCORIS modules (on the layer's device, fp32); returns their ModuleDict."""
    import torch.nn as nn

    mods = nn.ModuleDict()
    for path in targets.all:
        layer = model.get_submodule(path)
        m = make_module(K.module_key(prefix, path, targets), layer, path, spec)
        m.to(layer.weight.device)
        m.apply_to()
        mods[K.module_key(prefix, path, targets)] = m
    setattr(model, ATTR, mods)
    return mods


def is_attached(model: Any) -> bool:
    """Whether `model` carries LyCORIS modules attached by `attach` (else a peft adapter, if any)."""
    return hasattr(model, ATTR)


def modules_of(model: Any) -> Any:
    return getattr(model, ATTR)


def set_step(models: list[Any], seed: int, step: int) -> None:
    """DyLoRA: the units each module trains at `step`, drawn from (seed, step) (none for other networks)."""
    import torch

    for i, model in enumerate(models):
        mods = [m for m in getattr(model, ATTR, {}).values() if hasattr(m, "step_units")]
        if not mods:
            continue
        digest = hashlib.sha256(f"{seed}:{step}:dylora:{i}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        units = torch.randint(1, mods[0].block_count + 1, (len(mods),), generator=gen).tolist()
        for m, u in zip(mods, units):
            m.step_units = u


def file_tensors(model: Any) -> dict[str, "torch.Tensor"]:
    """The modules' tensors as the file holds them: `{kohya name}.{LyCORIS tensor name}`."""
    out = {}
    for name, m in modules_of(model).items():
        for key, value in m.state_dict().items():
            value = value.detach()
            if key in ("lora_up.weight", "lora_down.weight") and m.module_type == "conv2d":
                value = value.reshape(value.shape[0], -1, 1, 1)  # kohya's 1x1 conv LoRA shape
            out[f"{name}.{key}"] = value.contiguous()
    return out


def network_state(model: Any) -> dict[str, "torch.Tensor"]:
    """What resuming needs: every trained parameter by its module path (LyCORIS's DyLoRA units included)."""
    return {k: v.detach().cpu().clone() for k, v in modules_of(model).named_parameters()}


def load_network_state(model: Any, state: Mapping[str, "torch.Tensor"]) -> list[str]:
    """Copy a `network_state` back; returns the keys that do not match (unexpected or missing)."""
    import torch

    params = dict(modules_of(model).named_parameters())
    bad = sorted(set(params) ^ set(state))
    if not bad:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])
    return bad
