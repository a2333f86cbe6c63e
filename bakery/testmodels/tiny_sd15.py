"""The `tiny` base model: an SD1.5-shaped pipeline with random weights, built locally.

Real checkpoints cannot be downloaded on the machines that build and test this
project, so the demo and the tests train on this: the same classes, file
layout (diffusers directory: model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/) and code path as SD1.5, only small. It proves the whole
pipeline, not image quality.

Shape: UNet with cross-attention (2 levels), VAE with the real 8x downscale,
a 2-layer CLIP text encoder (so clip skip 2 is meaningful) and a CLIP BPE
tokenizer whose vocabulary is every byte plus whole-word merges for the words
given (triggers and tags), so a tag is one token like in the real vocabulary.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

TINY_SEED = 0
MARKER = "bakery-tiny.json"  # written last: a folder without it is an unfinished build


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer(folder: Path, words: Iterable[str] = ()) -> int:
    """vocab.json + merges.txt for transformers' CLIPTokenizer; returns the vocabulary size."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    table = _bytes_to_unicode()
    for word in sorted({w.lower() for text in words for w in text.replace(",", " ").replace("_", " ").split()}):
        symbols = [table[b] for b in word.encode("utf-8")]
        if len(symbols) < 2:
            continue
        symbols[-1] += "</w>"
        merged = symbols[0]
        for sym in symbols[1:]:
            pair = f"{merged} {sym}"
            merged += sym
            if merged not in vocab:
                merges.append(pair)
                vocab[merged] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # No blank line: tokenizers rejects one (the case of words that are all single characters).
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return len(vocab)


def build_tiny_sd15(folder: Path | str, words: Iterable[str] = (), seed: int = TINY_SEED) -> Path:
    """Build (once) and save the tiny SD1.5-shaped pipeline to `folder`; returns the folder.

    Deterministic: the same seed and words give the same weights.
    """
    folder = Path(folder)
    if (folder / MARKER).exists():
        return folder
    # Built beside it and renamed in: flow runs of a sweep on two workers may build the same one at once.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _build(tmp, words, seed)
        if folder.exists() and not (folder / MARKER).exists():  # a build that was interrupted
            shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:
        if not (folder / MARKER).exists():  # not another process finishing first: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build(folder: Path, words: Iterable[str], seed: int) -> None:
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = folder / "tokenizer"
    vocab_size = write_clip_tokenizer(tok_dir, words)
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
    )

    torch.manual_seed(seed)
    # Built in this order from the seed: the weights depend on it.
    unet, vae, text_encoder = _tiny_unet(), _tiny_vae(), _tiny_text_encoder(vocab_size)
    # SD1.5's training noise schedule.
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / MARKER).write_text(json.dumps({"preset": "tiny", "architecture": "sd15", "seed": seed}), encoding="utf-8")


def _tiny_unet():  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _tiny_vae():  # noqa: ANN202
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # SD1.5's VAE (128, 256, 512, 512), 2 layers per block, at a quarter of the width: four levels give
        # the real 8x downscale, and an encode costs about what it does next to the UNet in a real bake
        # (SD1.5: 1.4x a UNet forward in FLOPs; here ~1.8x in CPU time): the share caching latents saves.
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=64,
    )


def _tiny_text_encoder(vocab_size: int):  # noqa: ANN202
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=32,
        )
    )
