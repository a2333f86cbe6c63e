"""Anima's parts from the files users have (owner: anima-load): the DiT single file, its LLM adapter, the Qwen3
text encoder (folder or single file), the Qwen-Image VAE (single file or folder), the tokenizers.

Renames are diffusers' own converters (`convert_cosmos_transformer_checkpoint_to_diffusers` for the DiT,
`convert_wan_vae_to_diffusers` for the VAE: the official qwen_image_vae.safetensors is in the Wan-VAE layout,
which AutoencoderKLQwenImage shares, but diffusers' `from_single_file` has no entry for that class). Hand-written:
each part's config, read from its tensor shapes (diffusers' single-file loader would fetch it from the hub) with
what shapes do not tell shipped in bakery/configs/anima/ (written by us from the public numbers):

- transformer.json: Anima is Cosmos-Predict2-2B-shaped; patch (1, 2, 2); RoPE extrapolation (t, h, w) =
  (1, 4, 4) and the position range (128 frames, 512 x 512 latent pixels) as sd-scripts' anima_utils.load_anima_model
  builds it; no learnable position embedding (`extra_pos_embed_type` None); the padding mask concatenated;
- text_conditioner.json: the adapter's output padded to 512 tokens (sd-scripts' T5 max length);
- scheduler.json: flow-match Euler with shift 3 (ComfyUI's Anima sampling settings);
- qwen3_06b/config.json: Qwen3-0.6B's config (hub Qwen/Qwen3-0.6B), for a text encoder given as one file.

Tokenizers are never made up for a real model: Qwen3's comes from the text encoder's folder (or the folder beside a
single file), else the hub cache of Qwen/Qwen3-0.6B; T5's from `train.t5_tokenizer`, else the hub cache of
google/t5-v1_1-xxl; else a one-line error naming the recipe key and what to fetch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bakery.craft.bake import BakeError
from bakery.craft.bake.bases.single_file import CONFIGS as ALL_CONFIGS

CONFIGS = ALL_CONFIGS / "anima"
QWEN3_HUB, T5_HUB = "Qwen/Qwen3-0.6B", "google/t5-v1_1-xxl"
HUB_CACHE: str | None = None  # the hub cache tokenizers are looked up in (None: huggingface_hub's default)
ADAPTER = "llm_adapter."  # the LLM adapter's tensors inside the DiT file (after `net.`)
# A folder holds a tokenizer when it has one of these (transformers 5 makes an empty tokenizer where it finds none).
QWEN3_TOKENIZER = ("tokenizer.json", "vocab.json")
T5_TOKENIZER = ("tokenizer.json", "spiece.model")


def shipped(name: str) -> dict[str, Any]:
    """A shipped config (bakery/configs/anima/<name>), without diffusers' `_class_name`."""
    config = json.loads((CONFIGS / name).read_text())
    config.pop("_class_name", None)
    return config


@contextmanager
def named(key: str, value: str | None) -> Iterator[None]:
    """Errors while loading the file a recipe key names: one line naming the key."""
    try:
        yield
    except BakeError:
        raise
    except Exception as exc:
        raise BakeError(f"cannot load train.{key} {value!r}: {type(exc).__name__}: {exc}") from exc


def existing(key: str, value: str | None, what: str) -> Path:
    """The path a recipe key names; a one-line error naming the key when it is unset or missing."""
    if not value:
        raise BakeError(f"train.{key} is not set: Anima's DiT file needs {what} beside it")
    path = Path(value).expanduser()
    if not path.exists():
        raise BakeError(f"train.{key} {value!r}: no such file or folder ({what})")
    return path


def tensors(path: Path, strip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A .safetensors file's tensors, the first matching prefix of `strip` taken off each name."""
    from safetensors.torch import load_file

    out = {}
    for k, v in load_file(str(path)).items():
        out[next((k.removeprefix(p) for p in strip if k.startswith(p)), k)] = v
    return out


def built(cls: Any, config: dict[str, Any], state: dict[str, Any]) -> Any:
    """`cls(**config)` holding `state` exactly (every key; built without random init, then assigned)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls(**config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _count(state: dict[str, Any], prefix: str) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


# -- the DiT and its LLM adapter ------------------------------------------------------------------------------------


def dit(path: Path, adapter: str | None) -> tuple[Any, Any]:
    """(CosmosTransformer3DModel, AnimaTextConditioner) from the DiT file (`net.` or not) and its LLM adapter:
    `adapter` (train.llm_adapter) if set, else the one inside the file."""
    from diffusers import AnimaTextConditioner, CosmosTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers as convert

    state = tensors(path, ("net.",))
    inside = {k.removeprefix(ADAPTER): state.pop(k) for k in list(state) if k.startswith(ADAPTER)}
    if adapter:
        with named("llm_adapter", adapter):
            inside = tensors(existing("llm_adapter", adapter, "the LLM adapter"), ("net." + ADAPTER, ADAPTER))
    elif not inside:
        raise BakeError(f"{path.name} has no LLM adapter inside (no llm_adapter.* tensors): set train.llm_adapter "
                        "to Anima's LLM adapter .safetensors file")
    transformer = built(CosmosTransformer3DModel, transformer_config(state), convert(state))
    with named("llm_adapter", adapter or str(path)):
        conditioner = built(AnimaTextConditioner, conditioner_config(inside), inside)
    return transformer, conditioner


def transformer_config(state: dict[str, Any]) -> dict[str, Any]:
    """CosmosTransformer3DModel's config from the DiT's tensors (original names) and transformer.json."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in shipped("transformer.json").items()}
    patch = config["patch_size"][0] * config["patch_size"][1] * config["patch_size"][2]
    width, patch_in = state["x_embedder.proj.1.weight"].shape
    head_dim = state["blocks.0.self_attn.q_norm.weight"].shape[0]
    return {**config, "in_channels": patch_in // patch - int(config["concat_padding_mask"]),
            "out_channels": state["final_layer.linear.weight"].shape[0] // patch,
            "num_attention_heads": width // head_dim, "attention_head_dim": head_dim,
            "num_layers": _count(state, "blocks."), "mlp_ratio": state["blocks.0.mlp.layer1.weight"].shape[0] / width,
            "text_embed_dim": state["blocks.0.cross_attn.k_proj.weight"].shape[1],
            "adaln_lora_dim": state["blocks.0.adaln_modulation_self_attn.1.weight"].shape[0]}


def conditioner_config(state: dict[str, Any]) -> dict[str, Any]:
    """AnimaTextConditioner's config from the adapter's tensors (sd-scripts' LLMAdapter names) and
    text_conditioner.json."""
    vocab, target_dim = state["embed.weight"].shape
    model_dim = state["blocks.0.norm_cross_attn.weight"].shape[0]
    return {**shipped("text_conditioner.json"), "source_dim": state["blocks.0.cross_attn.k_proj.weight"].shape[1],
            "target_dim": target_dim, "model_dim": model_dim, "num_layers": _count(state, "blocks."),
            "num_attention_heads": model_dim // state["blocks.0.cross_attn.q_norm.weight"].shape[0],
            "mlp_ratio": state["blocks.0.mlp.0.weight"].shape[0] / model_dim, "target_vocab_size": vocab,
            "use_self_attention": "blocks.0.self_attn.q_proj.weight" in state,
            "use_layer_norm": "blocks.0.norm_mlp.bias" in state}


# -- the text encoder and the tokenizers ----------------------------------------------------------------------------


def text_encoder(value: str | None) -> tuple[Any, Any]:
    """(Qwen3Model, its tokenizer) from train.text_encoder: a transformers folder or one .safetensors file."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    path = existing("text_encoder", value, "the Qwen3-0.6B text encoder (a transformers folder or .safetensors file)")
    with named("text_encoder", value):
        if path.is_dir():
            if not has_tokenizer(path, QWEN3_TOKENIZER):
                raise BakeError(f"train.text_encoder {value!r} holds no tokenizer (tokenizer.json or vocab.json): "
                                f"fetch {QWEN3_HUB}'s tokenizer files into it")
            return (Qwen3Model.from_pretrained(str(path), local_files_only=True).eval(),
                    AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        state = tensors(path, ("model.",))
        state.pop("lm_head.weight", None)  # tied to the embedding (a Qwen3ForCausalLM file)
        model = built(Qwen3Model, {"config": Qwen3Config(**qwen3_config(state))}, state)
    return model, qwen3_tokenizer(path)


def qwen3_config(state: dict[str, Any]) -> dict[str, Any]:
    """Qwen3's config from a single file's tensors, the rest Qwen3-0.6B's (qwen3_06b/config.json)."""
    head_dim = state["layers.0.self_attn.q_norm.weight"].shape[0]
    vocab, hidden = state["embed_tokens.weight"].shape
    return {**shipped("qwen3_06b/config.json"), "vocab_size": vocab, "hidden_size": hidden, "head_dim": head_dim,
            "num_hidden_layers": _count(state, "layers."),
            "num_attention_heads": state["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
            "num_key_value_heads": state["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
            "intermediate_size": state["layers.0.mlp.gate_proj.weight"].shape[0]}


def has_tokenizer(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / n).is_file() for n in names)


def _hub_cached(cls: Any, repo: str, names: tuple[str, ...]) -> Any | None:
    """`repo`'s tokenizer from the hub cache (never fetched); None when its files are not there."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=HUB_CACHE)
        if isinstance(found, str):
            return cls.from_pretrained(str(Path(found).parent), local_files_only=True)
    return None


def qwen3_tokenizer(file: Path) -> Any:
    """Qwen3's tokenizer for a single-file text encoder: the folder it is in, else the hub cache."""
    from transformers import AutoTokenizer

    if has_tokenizer(file.parent, QWEN3_TOKENIZER):
        return AutoTokenizer.from_pretrained(str(file.parent), local_files_only=True)
    tok = _hub_cached(AutoTokenizer, QWEN3_HUB, QWEN3_TOKENIZER)
    if tok is None:
        raise BakeError(f"train.text_encoder {str(file)!r} is a single file and no Qwen3 tokenizer is beside it or "
                        f"in the hub cache: put {QWEN3_HUB}'s tokenizer.json and tokenizer_config.json beside it")
    return tok


def t5_tokenizer(value: str | None) -> Any:
    """The T5 tokenizer the LLM adapter's queries use: train.t5_tokenizer's folder, else the hub cache's."""
    from transformers import T5TokenizerFast

    if value:
        path = existing("t5_tokenizer", value, "the T5 tokenizer folder")
        if not has_tokenizer(path, T5_TOKENIZER):
            raise BakeError(f"train.t5_tokenizer {value!r} holds no T5 tokenizer (spiece.model or tokenizer.json): "
                            f"fetch {T5_HUB}'s into it")
        with named("t5_tokenizer", value):
            return T5TokenizerFast.from_pretrained(str(path), local_files_only=True)
    tok = _hub_cached(T5TokenizerFast, T5_HUB, T5_TOKENIZER)
    if tok is None:
        raise BakeError(f"train.t5_tokenizer is not set and {T5_HUB}'s tokenizer is not in the hub cache: fetch its "
                        "spiece.model, tokenizer.json and tokenizer_config.json into a folder and name it there")
    return tok


# -- the VAE --------------------------------------------------------------------------------------------------------


def vae(value: str | None) -> Any:
    """AutoencoderKLQwenImage from train.vae: the Qwen-Image VAE single file (Wan layout, or diffusers') or a
    diffusers folder."""
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = existing("vae", value, "the Qwen-Image VAE (qwen_image_vae.safetensors or a diffusers folder)")
    with named("vae", value):
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").exists() else None
            return AutoencoderKLQwenImage.from_pretrained(str(path), subfolder=sub, local_files_only=True).eval()
        state = tensors(path)
        state = convert_wan_vae_to_diffusers(state) if "encoder.conv1.weight" in state else state
        return built(AutoencoderKLQwenImage, vae_config(state), state)


def vae_config(state: dict[str, Any]) -> dict[str, Any]:
    """AutoencoderKLQwenImage's config from its tensors (diffusers' names); the rest are the class's defaults,
    which are Qwen-Image's (attention scales, latent mean and std)."""
    base_dim = state["encoder.conv_in.weight"].shape[0]
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for i in range(_count(state, "encoder.down_blocks.")):
        block = f"encoder.down_blocks.{i}."
        if block + "conv2.weight" in state:  # a residual block
            stages[-1].append(state[block + "conv2.weight"].shape[0])
        else:  # a downsampling step: the next stage begins
            temporal.append(block + "time_conv.weight" in state)
            stages.append([])
    return {"base_dim": base_dim, "z_dim": state["post_quant_conv.weight"].shape[0],
            "dim_mult": [s[0] // base_dim for s in stages], "num_res_blocks": len(stages[0]),
            "temperal_downsample": temporal}
