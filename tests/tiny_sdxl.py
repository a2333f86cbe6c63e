"""A tiny SDXL-shaped pipeline (two CLIP text encoders, text_time conditioning), random weights, for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from bakery.testmodels.tiny_sd15 import write_clip_tokenizer


def build_tiny_sdxl(folder, words=()):
    """`words`: whole tokens in its vocabulary besides bakery_girl (tags the tests prompt with)."""
    folder = Path(folder)
    if (folder / "model_index.json").exists(): return folder
    torch.manual_seed(0)
    vocab = write_clip_tokenizer(folder / "tok", ["bakery_girl", *words])
    tok = CLIPTokenizer(str(folder/"tok/vocab.json"), str(folder/"tok/merges.txt"), model_max_length=77, pad_token="<|endoftext|>")
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=64)
    cfg = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
               max_position_embeddings=77, bos_token_id=vocab-2, eos_token_id=vocab-1, pad_token_id=vocab-1, projection_dim=32)
    te = CLIPTextModel(CLIPTextConfig(**cfg)); te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
