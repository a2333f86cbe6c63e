"""A tiny Anima of the real architecture with random weights, for tests and the demo.

The same classes as the real model (diffusers' `CosmosTransformer3DModel`, `AnimaTextConditioner`,
`AutoencoderKLQwenImage`; transformers' `Qwen3Model`) and the files users have, only small:

- `anima.safetensors`: the DiT single file in the original layout (`net.` prefix, Cosmos-Predict2 names),
  with the LLM adapter inside (`net.llm_adapter.*`), as circlestone-labs ships it and sd-scripts reads it;
- `qwen3/`: the Qwen3 text encoder as a transformers folder (config, weights, tokenizer);
- `t5_tokenizer/`: the T5 tokenizer the LLM adapter's queries use (tokenizer files only);
- `vae.safetensors`: the Qwen-Image VAE single file in the layout users have (qwen_image_vae.safetensors: the
  Wan-VAE names, which diffusers' convert_wan_vae_to_diffusers reads), of the real structure (2 residual blocks
  per stage, channel multipliers 1, 2, 4, 4), only narrower.

Tokenizers are made here from the given words (byte-level BPE merges learnt for Qwen3, unigram pieces for T5), so a
tag is a few tokens as in the real vocabularies.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.craft.bake.bases.anima.network import original_name

TINY_SEED = 0
MARKER = "bakery-tiny-anima.json"  # written last: a folder without it is an unfinished build
HIDDEN = 32  # Qwen3's hidden size = the adapter's source, model and target width = the DiT's text width
BASE_WORDS = ("bakery_girl", "1girl", "solo", "smile", "looking_at_viewer", "simple_background", "masterpiece")



@dataclass(frozen=True)
class TinyFiles:
    """Where a tiny Anima's files are (what a recipe names: base_model, text_encoder, vae, t5_tokenizer)."""

    folder: Path
    dit: Path
    text_encoder: Path
    vae: Path
    t5_tokenizer: Path


def _words(words: Iterable[str]) -> list[str]:
    return sorted({*BASE_WORDS, *(w.strip() for w in words if w.strip())})


def qwen_tokenizer(words: Sequence[str]) -> Any:
    """A byte-level BPE tokenizer in Qwen2's form, its merges learnt from `words`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([", ".join(words)] * 8, trainer)
    return Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                              unk_token=None, model_max_length=512)


def t5_tokenizer(words: Sequence[str]) -> Any:
    """A unigram tokenizer in T5's form (pad 0, eos 1, unk 2) whose pieces are the words' parts (a tag's words,
    split at `_`), with and without the word-start mark, and their letters. Built, not trained: the unigram trainer's scores and ids vary from run to
    run, and the files must hold the tokenizer `components` makes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    parts = sorted({p for w in words for p in w.replace("_", " ").split()})
    letters = sorted({c for p in parts for c in p} | {"_", ","})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + p, -1.0) for p in parts] + [(p, -1.5) for p in parts if len(p) > 1]
    vocab += [(c, -5.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0,
                           model_max_length=512)


def components(words: Iterable[str] = ()) -> dict[str, Any]:
    """The tiny Anima's parts, in memory: what AnimaModularPipeline.update_components takes."""
    import torch
    from diffusers import (
        AnimaTextConditioner,
        AutoencoderKLQwenImage,
        CosmosTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import Qwen3Config, Qwen3Model

    words = _words(words)
    qwen_tok, t5_tok = qwen_tokenizer(words), t5_tokenizer(words)
    torch.manual_seed(TINY_SEED)
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(qwen_tok), hidden_size=HIDDEN, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=512, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    conditioner = AnimaTextConditioner(source_dim=HIDDEN, target_dim=HIDDEN, model_dim=HIDDEN, num_layers=2,
                                       num_attention_heads=4, target_vocab_size=len(t5_tok), min_sequence_length=512)
    # Anima is Cosmos-Predict2-2B-shaped: RoPE only (no learnable position embedding), padding mask concatenated;
    # positions and conditioner padding as bakery/configs/anima/ ships them for the real model.
    transformer = CosmosTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16,
                                           num_layers=2, text_embed_dim=HIDDEN, adaln_lora_dim=8,
                                           max_size=(128, 512, 512),
                                           rope_scale=(1.0, 4.0, 4.0), extra_pos_embed_type=None,
                                           concat_padding_mask=True)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 temperal_downsample=[False, True, True])
    return {"transformer": transformer, "text_conditioner": conditioner, "text_encoder": text_encoder,
            "tokenizer": qwen_tok, "t5_tokenizer": t5_tok, "vae": vae,
            "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)}  # Anima's sampler: flow-match Euler, shift 3



VAE_RESIDUAL = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                "conv_shortcut": "shortcut"}
VAE_TOP = {"quant_conv": "conv1", "post_quant_conv": "conv2", "conv_in": "conv1", "norm_out": "head.0",
           "conv_out": "head.2", "mid_block.attentions.0": "middle.1"}


def vae_original_name(diffusers_name: str) -> str:
    """An AutoencoderKLQwenImage parameter's name in the Wan-VAE layout of qwen_image_vae.safetensors: the inverse
    of diffusers' convert_wan_vae_to_diffusers (2 residual blocks per stage: each decoder stage is 3 of them and
    its upsampler, in one flat list)."""
    part, _, rest = diffusers_name.partition(".")
    if part not in ("encoder", "decoder"):
        return VAE_TOP[part] + "." + rest
    param = rest.rsplit(".", 1)
    module, leaf = param[0], param[1]
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)", module):
        module = f"middle.{2 * int(m[1])}.{VAE_RESIDUAL[m[2]]}"
    elif m := re.fullmatch(r"down_blocks\.(\d+)\.(\w+)", module):
        module = f"downsamples.{m[1]}.{VAE_RESIDUAL.get(m[2], m[2])}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
        module = f"upsamples.{4 * int(m[1]) + int(m[2])}.{VAE_RESIDUAL[m[3]]}"
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", module):
        module = f"upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    elif m := re.fullmatch(r"(down_blocks\.\d+)\.(.+)", module):  # a downsampler's resample / time_conv
        module = f"downsamples.{m[1].split('.')[1]}.{m[2]}"
    else:  # conv_in, norm_out, conv_out, the middle attention
        head = next(h for h in VAE_TOP if module == h or module.startswith(h + "."))
        module = VAE_TOP[head] + module.removeprefix(head)
    return f"{part}.{module}.{leaf}"


def dit_state_dict(transformer: Any, conditioner: Any) -> dict[str, Any]:
    """The DiT single file's tensors: `net.` + original names, the LLM adapter inside as `net.llm_adapter.*`."""
    sd = {f"net.{original_name(k)}": v.contiguous() for k, v in transformer.state_dict().items()}
    sd.update({f"net.llm_adapter.{k}": v.contiguous() for k, v in conditioner.state_dict().items()})
    return sd


def write(folder: Path, words: Iterable[str] = ()) -> TinyFiles:
    """The tiny Anima's files under `folder` (built once: the marker is written last)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    files = TinyFiles(folder, folder / "anima.safetensors", folder / "qwen3", folder / "vae.safetensors",
                      folder / "t5_tokenizer")
    if (folder / MARKER).exists():
        return files
    parts = components(words)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dit_state_dict(parts["transformer"], parts["text_conditioner"]), str(files.dit),
              metadata={"format": "pt"})
    parts["text_encoder"].save_pretrained(str(files.text_encoder), safe_serialization=True)
    parts["tokenizer"].save_pretrained(str(files.text_encoder))
    parts["t5_tokenizer"].save_pretrained(str(files.t5_tokenizer))
    save_file({vae_original_name(k): v.contiguous() for k, v in parts["vae"].state_dict().items()}, str(files.vae),
              metadata={"format": "pt"})
    (folder / MARKER).write_text(json.dumps({"words": _words(words)}))
    return files


def tiny_folder(workdir: Path, words: Sequence[str]) -> Path:
    """Where the tiny Anima for these words lives under a work dir (one build per set of words)."""
    key = hashlib.sha256(json.dumps(sorted(set(words))).encode()).hexdigest()[:10]
    return Path(workdir) / "models" / f"tiny-anima-{key}"
