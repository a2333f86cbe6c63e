#!/usr/bin/env python
"""Our trainer against kohya sd-scripts' train_network.py, at the same settings, in one call.

    .venv/bin/python benchmarks/bake.py --compare [--models sd15,sdxl] [--sd-scripts PATH] [--steps 30]
        [--variants base,channels_last,compile,sdpa-flash,unet-only] [--dir DIR] [--json out.json]
    .venv/bin/python benchmarks/bake.py --compare --tiny --models sd15 --steps 4   # the CPU check (our side)
    .venv/bin/python benchmarks/bake.py --compare --models anima --sd-scripts PATH   # Anima, 1024 px, batch 1
    .venv/bin/python benchmarks/bake.py --compare --tiny --models anima --sd-scripts PATH   # both sides on the CPU

Each model is built once in `--dir` with random weights in its REAL size (diffusers folder, fp16
on disk): SD1.5 (UNet 320/640/1280/1280, CLIP ViT-L text encoder, VAE) at 512 px, batch 4;
SDXL (UNet 320/640/1280 with 1/2/10 transformer layers, both text encoders, VAE) at 1024 px,
batch 2. The text encoders' token embeddings are sized to the benchmark's small tokenizer (the real
vocabulary would be fetched from the hub; the lookup costs nothing either way). Shared settings: LoRA dim 32 alpha 16, AdamW lr 1e-4 (constant), bf16 mixed precision
on CUDA (frozen base in bf16, LoRA weights fp32), cached latents, min-SNR 5, clip skip 2 (SD1.5),
captions shuffled after the first tag, gradient checkpointing on (both sides), seed 42, 8 pictures
with one caption each.

Every run is a fresh process (its own peak VRAM). Both sides are timed the same way: a global
optimizer step hook (`torch.optim.optimizer.register_optimizer_step_post_hook`) synchronises CUDA
and stamps the time; steps/s = 1 / the median interval after `--warmup` steps (our side encodes
its latents during the first epoch, sd-scripts before its first step: the warm-up skips that).
Peak VRAM is `torch.cuda.max_memory_allocated()` over the whole process; on the CPU, peak RSS.

Variants (our side; sd-scripts gets the equivalent flag where it has one):
  base           the defaults above
  channels_last  UNet weights in channels-last memory format
  compile        torch.compile of the UNet (after the LoRA is attached; first steps compile)
  sdpa-flash / sdpa-efficient / sdpa-cudnn / sdpa-math   one scaled-dot-product-attention backend
  unet-only      text encoders frozen, captions not shuffled: their encodings are cached (ours:
                 always then; sd-scripts: --network_train_unet_only, + --cache_text_encoder_outputs for SDXL)
  no-gc          gradient checkpointing off (both sides): faster, more VRAM
Fused AdamW is our default (one kernel for all LoRA tensors); sd-scripts' AdamW is torch's default.

`--tiny`: the tiny SD1.5/SDXL-shaped test models at 64 px, fp32 on the CPU, our side only
(sd-scripts builds the real architectures itself and cannot load the tiny ones).

`--models anima` (bake_anima.py): the files users have, 1024 px batch 1 (tiny: 64 px batch 2), Qwen3's outputs
cached on both sides; sd-scripts' anima_train_network.py runs on the config `bakery export-kohya` writes, also
with `--tiny` (its fixed model sizes shrunk to the tiny files'). Published figure to beat: bake_anima.PUBLISHED.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bake_anima  # noqa: E402  (the Anima case: its files, its [train], sd-scripts' config from our export)

CAPTION = "bakery_girl, red_dress, smile, standing, outdoors"
N_PICTURES = 8
VARIANTS = ("base", "channels_last", "compile", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math",
            "unet-only", "no-gc")
# SD-scripts loads its tokenizers from the hub unless --tokenizer_cache_dir holds them under these names.
KOHYA_TOKENIZERS = {"sd15": ("openai_clip-vit-large-patch14",),
                    "sdxl": ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")}


@dataclass(frozen=True)
class Setting:
    model: str  # sd15 | sdxl
    resolution: int
    batch: int
    dim: int = 32
    alpha: float = 16.0
    lr: float = 1e-4
    seed: int = 42


MODELS = ("sd15", "sdxl", "anima")


def setting(model: str, tiny: bool) -> Setting:
    if tiny:
        return Setting(model, 64, 2)
    return {"sd15": Setting(model, 512, 4), "sdxl": Setting(model, 1024, 2), "anima": Setting(model, 1024, 1)}[model]


# --- step timing, shared by both sides -------------------------------------------------------


class StepClock:
    """Stamps every optimizer step (after CUDA has finished it), whoever's optimizer it is."""

    def __init__(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.cuda = torch.cuda.is_available()
        self.stamps: list[float] = []
        register_optimizer_step_post_hook(self._hook)

    def _hook(self, _optimizer, _args, _kwargs) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())

    def summary(self, warmup: int) -> dict:
        import torch

        gaps = sorted(b - a for a, b in zip(self.stamps[warmup:], self.stamps[warmup + 1:]))
        out = {"steps": len(self.stamps), "steps_measured": len(gaps),
               "steps_per_s": 1.0 / gaps[len(gaps) // 2] if gaps else None,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if self.cuda:
            out["device"] = torch.cuda.get_device_name(0)
            out["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_vram_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        return out


# --- the models (random weights) --------------------------------------------------------------


def _clip_config(vocab: int, hidden: int, layers: int, heads: int, inter: int, proj: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, bos_token_id=vocab - 2,
                          eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=proj, hidden_act=act)


def _vae(scaling: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                         sample_size=512, scaling_factor=scaling)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1)


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    from bakery.testmodels.tiny_sd15 import write_clip_tokenizer

    vocab = write_clip_tokenizer(folder, [CAPTION])
    return vocab, CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                                pad_token="<|endoftext|>")


def real_sd15(folder: Path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    vocab, tok = _tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.5's config
    te = CLIPTextModel(_clip_config(vocab, 768, 12, 12, 3072, 768, "quick_gelu"))
    return StableDiffusionPipeline(unet=unet, vae=_vae(0.18215), text_encoder=te, tokenizer=tok,
                                   scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def real_sdxl(folder: Path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab, tok = _tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(  # SDXL base 1.0's config
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    te = CLIPTextModel(_clip_config(vocab, 768, 12, 12, 3072, 768, "quick_gelu"))
    te2 = CLIPTextModelWithProjection(_clip_config(vocab, 1280, 32, 20, 5120, 1280, "gelu"))
    return StableDiffusionXLPipeline(vae=_vae(0.13025), text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=_scheduler())


def build_model(model: str, tiny: bool, root: Path) -> Path:
    """The model's diffusers folder (built once), with the tokenizers sd-scripts looks for beside it."""
    folder = root / f"{'tiny' if tiny else 'real'}-{model}"
    if (folder / "model_index.json").exists():
        return folder
    import torch

    torch.manual_seed(0)
    if tiny:
        if model == "sd15":
            from bakery.testmodels.tiny_sd15 import build_tiny_sd15

            return build_tiny_sd15(folder, words=[CAPTION])
        from tests.tiny_sdxl import build_tiny_sdxl

        return build_tiny_sdxl(folder)
    pipe = real_sd15(folder) if model == "sd15" else real_sdxl(folder)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    for name in KOHYA_TOKENIZERS[model]:
        pipe.tokenizer.save_pretrained(root / "tokenizers" / name)
    return folder


# --- the pictures, for both sides -------------------------------------------------------------


def pictures(root: Path, size: int) -> Path:
    """N_PICTURES square pictures of `size` px with one caption each, in sd-scripts' layout
    (`img/1_bench/imgN.png` + `.txt`): one bucket, repeats 1."""
    folder = root / f"data-{size}" / "img" / "1_bench"
    if (folder / f"img{N_PICTURES - 1}.txt").exists():
        return folder
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    for i in range(N_PICTURES):
        arr = np.stack([(x * (i + 1) * 3) % 256, (y * 5 + i * 17) % 256, (x + y) % 256], -1)
        arr = np.clip(arr + rng.integers(0, 24, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png", compress_level=1)
        (folder / f"img{i}.txt").write_text(CAPTION, encoding="utf-8")
    return folder


def trainset(folder: Path, work: Path):
    from bakery.manifest import TrainImage, TrainSet
    from storage import ContentStore

    store = ContentStore(work / "store")
    images = [TrainImage("bench", p.stem, store.put_bytes(p.read_bytes()).sha256, CAPTION, 1)
              for p in sorted(folder.glob("img*.png"))]
    return store, TrainSet(images, ["bakery_girl"])


# --- one run of each side (each in its own process) -------------------------------------------


def sdpa_context(variant: str):
    import contextlib

    if not variant.startswith("sdpa-"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[variant.removeprefix("sdpa-")]
    return sdpa_kernel([backend])


def total_steps(steps: int, warmup: int) -> int:
    return warmup + steps + 1


def ours(model: str, tiny: bool, variant: str, steps: int, warmup: int, root: Path) -> dict:
    import torch

    from bakery.craft.bake import data as D
    from bakery.craft.bake import loop as B
    from bakery.craft.bake.bases import load as F
    from bakery.recipe import TrainParams

    clock = StepClock()
    s, cuda = setting(model, tiny), torch.cuda.is_available()
    work = root / "runs" / f"ours-{model}-{variant}-{os.getpid()}"
    store, ts = trainset(pictures(root, s.resolution), work)
    per_epoch = N_PICTURES // s.batch
    epochs = -(-total_steps(steps, warmup) // per_epoch)
    if model == "anima":
        f = bake_anima.files(tiny, root, CAPTION.split(", "))
        params, base = bake_anima.params(s, f, cuda, variant, epochs), bake_anima.load(f, work, ts.triggers)
    else:
        folder = build_model(model, tiny, root)
        params = TrainParams(base_model=str(folder), device="cuda" if cuda else "cpu", optimizer="adamw",
                             learning_rate=s.lr, lr_batch_scaling=False,  # sd-scripts is handed the same rate
                             lr_scheduler="constant", epochs=epochs, batch_size=s.batch,
                             network_dim=s.dim, network_alpha=s.alpha, cache_latents=True,
                             mixed_precision="bf16" if cuda else "no",
                             gradient_checkpointing=cuda and variant != "no-gc",
                             train_text_encoder=variant != "unet-only", shuffle_caption=variant != "unet-only",
                             save_every_n_epochs=epochs, seed=s.seed)
        base = F.load_base(str(folder), work, words=ts.triggers)
    denoiser = base.family.denoiser(base.pipe)
    if variant == "channels_last":
        denoiser.to(memory_format=torch.channels_last)
    if variant == "compile":
        denoiser.compile()  # traced at the first step, after the LoRA is attached
    with sdpa_context(variant):
        B.bake(ts, params, image_path=store.path, workdir=work, out_dir=work / "out", state_dir=work / "state",
               name="bench", data=D.DataConfig(s.resolution, s.resolution, s.resolution, 64, s.batch),
               bake_key="bench", base=base)
    return {**clock.summary(warmup), "side": "ours", "epochs": epochs}


def kohya_args(s: Setting, variant: str, folder: Path, data: Path, out: Path, root: Path, n_steps: int) -> list[str]:
    args = ["--pretrained_model_name_or_path", str(folder), "--train_data_dir", str(data.parent),
            "--output_dir", str(out), "--output_name", "bench", "--save_model_as", "safetensors",
            "--resolution", f"{s.resolution},{s.resolution}", "--train_batch_size", str(s.batch),
            "--max_train_steps", str(n_steps), "--network_module", "networks.lora",
            "--network_dim", str(s.dim), "--network_alpha", str(s.alpha), "--optimizer_type", "AdamW",
            "--learning_rate", str(s.lr), "--lr_scheduler", "constant", "--mixed_precision", "bf16",
            "--cache_latents", "--sdpa", "--seed", str(s.seed), "--caption_extension", ".txt",
            "--keep_tokens", "1", "--min_snr_gamma", "5", "--max_grad_norm", "1.0",
            "--tokenizer_cache_dir", str(root / "tokenizers"), "--max_data_loader_n_workers", "0"]
    if variant != "unet-only":  # sd-scripts refuses to shuffle captions whose encodings it caches
        args.append("--shuffle_caption")
    if variant != "no-gc":
        args.append("--gradient_checkpointing")
    if s.model == "sd15":
        args += ["--clip_skip", "2"]  # our default (anime)
    if variant == "unet-only":
        args.append("--network_train_unet_only")
        if s.model == "sdxl":
            args.append("--cache_text_encoder_outputs")
    if variant == "compile":
        args += ["--torch_compile", "--dynamo_backend", "inductor"]
    return args


def _kohya_anima(tiny: bool, variant: str, n_steps: int, root: Path, out: Path) -> list[str]:
    """anima_train_network.py's command line: export-kohya's config for our side's [train] (bake_anima.py)."""
    import torch

    s, f = setting("anima", tiny), bake_anima.files(tiny, root, CAPTION.split(", "))
    store, ts = trainset(pictures(root, s.resolution), out / "work")
    config = bake_anima.sd_scripts_config(s, f, store, ts, out, n_steps, torch.cuda.is_available(), variant)
    if tiny:
        bake_anima.shrink_sd_scripts(f)
    bake_anima.transformers4()
    return ["--config_file", str(config)]


def kohya(model: str, tiny: bool, variant: str, steps: int, warmup: int, root: Path, sd_scripts: Path) -> dict:
    """sd-scripts' train_network.py (sdxl_, anima_train_network.py) run in this process, timed by the same clock."""
    import runpy

    clock = StepClock()
    s = setting(model, tiny)
    script = sd_scripts / {"sdxl": "sdxl_train_network.py", "anima": bake_anima.SCRIPT}.get(model, "train_network.py")
    out = root / "runs" / f"kohya-{model}-{variant}-{os.getpid()}"
    sys.path.insert(0, str(sd_scripts))
    os.chdir(sd_scripts)
    if model == "anima":
        args = _kohya_anima(tiny, variant, total_steps(steps, warmup), root, out)
    else:
        folder, data = build_model(model, False, root), pictures(root, s.resolution)
        args = kohya_args(s, variant, folder, data, out, root, total_steps(steps, warmup))
    sys.argv = [str(script), *args]
    with sdpa_context(variant):
        runpy.run_path(str(script), run_name="__main__")
    return {**clock.summary(warmup), "side": "sd-scripts"}


# --- the comparison -----------------------------------------------------------------------------


def child(side: str, model: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", side, "--models", model, "--variants", variant, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--dir", str(args.dir)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--sd-scripts", str(args.sd_scripts)] if args.sd_scripts else []
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # sd-scripts may need more
    out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
                         check=False)
    if out.returncode:
        return {"side": side, "error": (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> dict:
    report: dict = {"settings": {}, "runs": []}
    for model in args.models:
        report["settings"][model] = asdict(setting(model, args.tiny))
        for variant in args.variants:
            run = {"model": model, "variant": variant, "ours": child("ours", model, variant, args)}
            # sd-scripts builds the SD UNets itself (no tiny ones); it reads the tiny Anima's files (bake_anima.py)
            if args.sd_scripts and (not args.tiny or model == "anima") and variant != "channels_last":
                run["sd_scripts"] = child("kohya", model, variant, args)
                a, b = run["ours"].get("steps_per_s"), run["sd_scripts"].get("steps_per_s")
                run["speed_ratio"] = a / b if a and b else None
            report["runs"].append(run)
            print(line(run), flush=True)
    return report


def _fmt(r: dict | None) -> str:
    if not r:
        return "-"
    if "error" in r:
        return f"FAILED: {r['error']}"
    mem = f"{r['peak_vram_gb']:.2f} GB VRAM" if "peak_vram_gb" in r else f"{r['peak_rss_mb']:.0f} MB RSS"
    return f"{r['steps_per_s']:.3f} steps/s over {r['steps_measured']}, {mem}"


def line(run: dict) -> str:
    text = f"{run['model']:5s} {run['variant']:14s} ours {_fmt(run['ours'])}"
    if "sd_scripts" in run:
        text += f" | sd-scripts {_fmt(run['sd_scripts'])}"
        if run.get("speed_ratio"):
            text += f" | {run['speed_ratio']:.2f}x (target >= 1.3x)"
    return text


def parse(argv: list[str]):
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="sd15,sdxl", type=lambda v: v.split(","))
    ap.add_argument("--variants", default="base", type=lambda v: v.split(","),
                    help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--sd-scripts", type=Path, help="a kohya-ss/sd-scripts checkout (its requirements installed)")
    ap.add_argument("--steps", type=int, default=30, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps not measured (latent caching, compile, allocator)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 64 px (the CPU check): our side only, "
                    "but for anima")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bakery-bench-bake",
                    help="models, pictures and runs (models are built once and kept)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    ap.add_argument("--one", choices=["ours", "kohya"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in VARIANTS] + [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown model or variant: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    args.dir = args.dir.resolve()
    if args.one:
        model, variant = args.models[0], args.variants[0]
        result = (ours(model, args.tiny, variant, args.steps, args.warmup, args.dir) if args.one == "ours"
                  else kohya(model, args.tiny, variant, args.steps, args.warmup, args.dir, args.sd_scripts.resolve()))
        print(json.dumps(result))
        return 0
    report = compare(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any("error" in r["ours"] or "error" in r.get("sd_scripts", {}) for r in report["runs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
