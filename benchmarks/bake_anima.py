"""The Anima case of `benchmarks/bake.py --compare --models anima` (bake_compare.py runs it).

Both sides get the same files a user has: the DiT single file (LLM adapter inside), the Qwen3 folder, the
Qwen-Image VAE file (Wan layout) and the T5 tokenizer folder. Real size (the day a GPU is lent): Anima's
architecture with random weights (Cosmos-Predict2-2B: 28 blocks of 2048, 16 heads; the 6-layer adapter of
1024; Qwen3-0.6B; the Qwen-Image VAE), its token embeddings sized to the benchmark's small tokenizers, bf16 on
disk, 1024 px, batch 1. Tiny (the CPU check): bases/anima/tiny.py's files, 64 px, batch 2.

Settings: LoRA dim 32 alpha 16 on each block's attention and MLP, AdamW lr 1e-4 constant, rectified flow with
sigmoid timestep sampling, Qwen3 frozen with its outputs cached (captions not shuffled, as sd-scripts requires
for that), cached latents, bf16 and gradient checkpointing on CUDA. sd-scripts' side is
`anima_train_network.py --config_file` with the config `bakery export-kohya` writes for the same [train]
(kohya_dataset.export), and only what a benchmark must change on top: steps instead of epochs, no saved state,
no data-loader workers, precision and checkpointing as our side has them on this device.

sd-scripts builds Anima's DiT, LLM adapter and VAE at the real model's sizes whatever the file holds
(library/anima_utils.py `load_anima_model`: a fixed config; anima_models.Anima: `LLMAdapter(1024, 1024, 1024,
6 layers)` with a 32128-token embedding; qwen_image_autoencoder_kl.py `load_vae`: base_dim 96). For the tiny
files `shrink_sd_scripts` replaces those literals, and nothing else, with the sizes read from the files; then
sd-scripts loads them strictly (no missing or unexpected key).

Published figure to beat (issue 26): Anima-Base LoRA at 0.34 it/s in ~11 GB on an RTX 4090.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PUBLISHED = "Anima-Base LoRA: 0.34 it/s in ~11 GB on an RTX 4090 (as issue 26 quotes it)"
SCRIPT = "anima_train_network.py"


def files(tiny: bool, root: Path, words: list[str]) -> Any:
    """The model files (built once under `root`): bases/anima/tiny.py's TinyFiles layout."""
    from bakery.craft.bake.bases.anima import tiny as T

    folder = root / f"{'tiny' if tiny else 'real'}-anima"
    return T.write(folder, words) if tiny else _write_real(folder, words)


def _write_real(folder: Path, words: list[str]) -> Any:
    """Anima's real architecture, random weights, in the files' layout (bf16)."""
    import json

    import torch
    from diffusers import AnimaTextConditioner, AutoencoderKLQwenImage, CosmosTransformer3DModel
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3Model

    from bakery.craft.bake.bases.anima import tiny as T
    from bakery.craft.bake.bases.anima.files import CONFIGS

    out = T.TinyFiles(folder, folder / "anima.safetensors", folder / "qwen3", folder / "vae.safetensors",
                      folder / "t5_tokenizer")
    if (folder / T.MARKER).exists():
        return out
    words = T._words(words)
    qwen_tok, t5_tok = T.qwen_tokenizer(words), T.t5_tokenizer(words)
    torch.manual_seed(0)
    config = json.loads((CONFIGS / "qwen3_06b" / "config.json").read_text())  # Qwen3-0.6B's
    eos = qwen_tok.eos_token_id  # the small vocabulary's own
    te = Qwen3Model(Qwen3Config(**{**config, "vocab_size": len(qwen_tok), "bos_token_id": eos, "eos_token_id": eos}))
    conditioner = AnimaTextConditioner(source_dim=1024, target_dim=1024, model_dim=1024, num_layers=6,
                                       num_attention_heads=16, target_vocab_size=32128, min_sequence_length=512)
    dit = CosmosTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=16, attention_head_dim=128,
                                   num_layers=28, text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 512, 512),
                                   rope_scale=(1.0, 4.0, 4.0), extra_pos_embed_type=None, concat_padding_mask=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16) for k, v in T.dit_state_dict(dit, conditioner).items()}, str(out.dit))
    te.to(torch.bfloat16).save_pretrained(str(out.text_encoder), safe_serialization=True)
    qwen_tok.save_pretrained(str(out.text_encoder))
    t5_tok.save_pretrained(str(out.t5_tokenizer))
    vae = AutoencoderKLQwenImage()  # diffusers' defaults are Qwen-Image's VAE
    save_file({T.vae_original_name(k): v.contiguous() for k, v in vae.state_dict().items()}, str(out.vae))
    (folder / T.MARKER).write_text(json.dumps({"words": words}))
    return out


def params(s: Any, f: Any, cuda: bool, variant: str, epochs: int) -> Any:
    """[train] of both sides: ours trains with it, sd-scripts gets what export-kohya makes of it."""
    from bakery.recipe import TrainParams

    return TrainParams(base_model=str(f.dit), architecture="anima", text_encoder=str(f.text_encoder),
                       vae=str(f.vae), t5_tokenizer=str(f.t5_tokenizer), device="cuda" if cuda else "cpu",
                       optimizer="adamw", learning_rate=s.lr, lr_batch_scaling=False, lr_scheduler="constant",
                       epochs=epochs, batch_size=s.batch, network_dim=s.dim, network_alpha=s.alpha, min_snr_gamma=0,
                       cache_latents=True, mixed_precision="bf16" if cuda else "no", train_text_encoder=False,
                       gradient_checkpointing=cuda and variant != "no-gc", shuffle_caption=False,
                       save_every_n_epochs=epochs, seed=s.seed)


def load(f: Any, work: Path, words: list[str]) -> Any:
    from bakery.craft.bake.bases import load as F
    from bakery.craft.bake.bases.family import BaseFiles

    return F.load_base(str(f.dit), work, architecture="anima", words=words,
                       files=BaseFiles(vae=str(f.vae), text_encoder=str(f.text_encoder),
                                       t5_tokenizer=str(f.t5_tokenizer)))


def sd_scripts_config(s: Any, f: Any, store: Any, ts: Any, out: Path, n_steps: int, cuda: bool,
                      variant: str) -> Path:
    """sd-scripts' --config_file: our export of the same [train] and pictures, with the benchmark's changes."""
    from bakery.craft.bake import kohya_dataset as kohya
    from bakery.kohya_export import train_values

    export = out / "export"
    settings = kohya.TrainSettings(name="bench", sdxl=False, resolution=s.resolution, min_bucket_reso=s.resolution,
                                   max_bucket_reso=s.resolution, bucket_reso_steps=64,
                                   train=train_values(params(s, f, cuda, variant, 1)), triggers=tuple(ts.triggers),
                                   architecture="anima")
    written = kohya.export(export, ts.images, store.path, settings, {"bench": 1})
    flat = {k: v for section in tomllib.loads(written["train_config"].read_text()).values() for k, v in section.items()}
    for key in ("max_train_epochs", "save_every_n_epochs", "save_state"):
        flat.pop(key, None)
    flat.update({"max_train_steps": n_steps, "output_dir": str(out / "model"), "max_data_loader_n_workers": 0,
                 "persistent_data_loader_workers": False, "mixed_precision": "bf16" if cuda else "no",
                 "gradient_checkpointing": cuda and variant != "no-gc"})
    if variant == "compile":
        flat.update({"torch_compile": True, "dynamo_backend": "inductor"})
    path = out / "bench.toml"
    path.write_text(kohya.to_toml(flat, ["export-kohya's train_network.toml with the benchmark's changes"]))
    return path


def _sizes(dit: Path, vae: Path) -> tuple[dict, dict, int, int]:
    """The tiny DiT's, adapter's and VAE's sizes, from the files' tensor shapes."""
    from safetensors import safe_open

    with safe_open(str(dit), "pt") as fh:
        s = {k.removeprefix("net."): tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    with safe_open(str(vae), "pt") as fh:
        base_dim = fh.get_slice("encoder.conv1.weight").get_shape()[0]
    width, adapter = s["x_embedder.proj.1.weight"][0], s["llm_adapter.out_proj.weight"][1]
    count = lambda prefix, i: len({k.split(".")[i] for k in s if k.startswith(prefix)})  # noqa: E731
    dit_kw = {"model_channels": width, "num_blocks": count("blocks.", 1),
              "num_heads": width // s["blocks.0.self_attn.q_norm.weight"][0],
              "adaln_lora_dim": s["blocks.0.adaln_modulation_self_attn.1.weight"][0],
              "crossattn_emb_channels": s["blocks.0.cross_attn.k_proj.weight"][1]}
    vocab, target = s["llm_adapter.embed.weight"]
    adapter_kw = {"source_dim": s["llm_adapter.blocks.0.cross_attn.k_proj.weight"][1], "target_dim": target,
                  "model_dim": adapter, "num_layers": count("llm_adapter.blocks.", 2),
                  "num_heads": adapter // s["llm_adapter.blocks.0.self_attn.q_norm.weight"][0]}
    return dit_kw, adapter_kw, vocab, base_dim


def transformers4() -> None:
    """What sd-scripts (pinned to transformers 4.54) calls that transformers 5 dropped: `batch_encode_plus`."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    if not hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        PreTrainedTokenizerBase.batch_encode_plus = PreTrainedTokenizerBase.__call__  # same arguments, same result


def shrink_sd_scripts(f: Any) -> None:
    """sd-scripts' fixed Anima sizes replaced by the tiny files' (its modules must be importable: cwd on sys.path)."""
    import torch
    from library import anima_models, qwen_image_autoencoder_kl

    dit_kw, adapter_kw, vocab, base_dim = _sizes(f.dit, f.vae)
    dit_cls, adapter_cls = anima_models.Anima, anima_models.LLMAdapter
    vae_cls = qwen_image_autoencoder_kl.AutoencoderKLQwenImage

    class Anima(dit_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **{**kw, **dit_kw})

    class LLMAdapter(adapter_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **{**kw, **adapter_kw})
            self.embed = torch.nn.Embedding(vocab, adapter_kw["target_dim"])  # 32128 T5 tokens in sd-scripts

    class AutoencoderKLQwenImage(vae_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **{**kw, "base_dim": base_dim})

    anima_models.Anima, anima_models.LLMAdapter = Anima, LLMAdapter
    qwen_image_autoencoder_kl.AutoencoderKLQwenImage = AutoencoderKLQwenImage
