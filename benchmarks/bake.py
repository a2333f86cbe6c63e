#!/usr/bin/env python
"""Benchmark the bake (LoRA training) loop.

    .venv/bin/python benchmarks/bake.py [--steps 40] [--json out.json] [--strict] [--skip-cuda]
    .venv/bin/python benchmarks/bake.py --compare [...]   # our trainer vs sd-scripts: benchmarks/bake_compare.py

CPU, tiny model (bakery/testmodels/tiny_sd15.py, random weights): LoRA dim 8 alpha 4,
batch 2, 64 px, AdamW, text encoder trained, measured twice, each in a fresh
Python process so its peak RSS is its own:
  - cached latents: the VAE encodes each image once (first epoch) and later epochs
    read the latents from the disk cache;
  - uncached: every step decodes the PNG, resizes it and runs the VAE encoder.
Steps/s is 1 / the median step time over the steps after the first epoch (warm
caches, warm allocator; the median because the build machine is shared).
Target: cached >= 1.5x uncached.

The tiny model's VAE is SD1.5's VAE at a quarter of the width (2.1M-parameter
encoder): its encode takes ~1.8x a tiny UNet forward in CPU time, where SD1.5's
costs 1.39x a UNet forward in FLOPs. A second pair of runs swaps in SD1.5's full VAE shape (random
weights, 34M-parameter encoder) with the same tiny UNet/text encoder: there the
encode costs what it costs in a real bake on CPU.

CUDA (when a GPU is present): the real SD1.5 shape (UNet 320/640/1280/1280 with
cross-attention 768, VAE 128/256/512/512, CLIP ViT-L/14 text encoder, 12 layers),
random weights, 512 px, batch 2, the `sd15_8gb` profile (bf16/fp16 autocast,
gradient checkpointing, cached latents), LoRA dim 32 alpha 16: it/s and peak VRAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _trainset(store, n: int, size: int):
    import io

    import numpy as np
    from PIL import Image

    from bakery.manifest import TrainImage, TrainSet

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        y, x = np.mgrid[0:size, 0:size]
        arr = np.stack([(x * (i + 1) * 3) % 256, (y * 5 + i * 17) % 256, (x + y) % 256], -1).astype(np.uint8)
        arr = np.clip(arr + rng.integers(0, 24, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=1)
        images.append(TrainImage("chara", f"img{i}", store.put_bytes(buf.getvalue()).sha256,
                                 "bakery_girl, red_dress, smile, standing, outdoors", 1))
    return TrainSet(images, ["bakery_girl"])


def _bench_set(prefix: str, size: int, steps: int):
    """A fresh work dir with 8 generated images of `size` px in its store, batch 2, and enough epochs
    for `steps` steps after the first epoch (the warm-up one)."""
    from storage import ContentStore

    work = Path(tempfile.mkdtemp(prefix=prefix))
    store = ContentStore(work / "store")
    n_images, batch = 8, 2
    epochs = 1 + max(1, -(-steps // (n_images // batch)))
    return work, store, _trainset(store, n_images, size), batch, epochs


def _warm_steps(stamps: list[tuple[int, int, float]]) -> tuple[tuple[int, int, float], list[tuple[int, int, float]]]:
    """The last step of epoch 1 (the clock's start) and the steps after it."""
    return [t for t in stamps if t[1] == 1][-1], [t for t in stamps if t[1] >= 2]


def _sd15_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                         sample_size=512)


def one_cpu(cached: bool, steps: int, vae: str = "tiny") -> dict:  # noqa: C901
    """One measured run (called in its own process). `vae="sd15"`: the tiny UNet/text encoder with
    SD1.5's VAE shape (random weights), so encoding costs what it does in a real bake."""
    import torch

    from bakery.craft.bake import data as D
    from bakery.craft.bake import loop as B
    from bakery.craft.bake.bases import load as F
    from bakery.recipe import TrainParams

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    work, store, ts, batch, epochs = _bench_set("bench-bake-", 64, steps)
    params = TrainParams(base_model="tiny", device="cpu", optimizer="adamw", learning_rate=1e-4, epochs=epochs,
                         batch_size=batch, network_dim=8, network_alpha=4, cache_latents=cached,
                         save_every_n_epochs=epochs)
    stamps: list[tuple[int, int, float]] = []
    base = F.load_base("tiny", work, words=ts.triggers)
    if vae == "sd15":
        torch.manual_seed(0)
        base.pipe.vae = _sd15_vae()
    pixels = torch.zeros(batch, 3, 64, 64)
    with torch.no_grad():
        base.pipe.vae.encode(pixels)
        t0 = time.perf_counter()
        for _ in range(5):
            base.pipe.vae.encode(pixels)
    encode_ms = (time.perf_counter() - t0) / 5 * 1000
    res = B.bake(ts, params, image_path=store.path, workdir=work, out_dir=work / "out", state_dir=work / "state",
                 name="bench", data=D.DataConfig(64, 64, 64, 64, batch), bake_key="bench", base=base,
                 on_step=lambda i: stamps.append((i.step, i.epoch, time.perf_counter())))
    first_warm, warm = _warm_steps(stamps)
    # The median step time: the build machine is shared, and a mean is at the mercy of other jobs.
    times = sorted(b[2] - a[2] for a, b in zip([first_warm, *warm[:-1]], warm))
    rate = 1.0 / times[len(times) // 2]
    return {
        "cached_latents": cached,
        "vae": vae,
        "vae_encode_ms_per_batch": encode_ms,
        "steps_measured": len(warm),
        "steps_per_s": rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "latent_cache_hits": res.latent_cache_hits,
        "latent_cache_misses": res.latent_cache_misses,
    }


def _sd15_shape_pipeline(folder: Path):
    """SD1.5's real architecture with random weights (nothing downloaded)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from bakery.testmodels.tiny_sd15 import write_clip_tokenizer

    torch.manual_seed(0)
    vocab = write_clip_tokenizer(folder / "tokenizer", ["bakery_girl, red_dress, smile, standing, outdoors"])
    tokenizer = CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"),
                              model_max_length=77, pad_token="<|endoftext|>")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.5 defaults
    vae = _sd15_vae()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab - 2,
                                      eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=768))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tokenizer, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def one_cuda(steps: int) -> dict:
    import torch

    from bakery.craft.bake import data as D
    from bakery.craft.bake import loop as B
    from bakery.craft.bake import precision as PR
    from bakery.craft.bake.bases import load as F
    from bakery.doctor import vram_estimate
    from bakery.recipe import TrainParams

    work, store, ts, batch, epochs = _bench_set("bench-bake-cuda-", 512, steps)
    pipe = _sd15_shape_pipeline(work / "model")
    params = TrainParams(profile="sd15_8gb", base_model="sd15-shape", optimizer="adamw", learning_rate=1e-4,
                         epochs=epochs, batch_size=batch, network_dim=32, network_alpha=16, save_every_n_epochs=epochs)
    stamps: list[tuple[int, int, float]] = []

    def on_step(i):
        torch.cuda.synchronize()
        stamps.append((i.step, i.epoch, time.perf_counter()))

    torch.cuda.reset_peak_memory_stats()
    B.bake(ts, params, image_path=store.path, workdir=work, out_dir=work / "out", state_dir=work / "state",
           name="bench", data=D.DataConfig(512, 256, 1024, 64, batch), bake_key="bench",
           base=F.Base(pipe, F.family_for("sd15"), "sd15-shape"), on_step=on_step)
    first_warm, warm = _warm_steps(stamps)
    prec = PR.choose_precision("auto", "auto", None)
    return {
        "device": torch.cuda.get_device_name(0),
        "precision": str(prec.weight_dtype),
        "gradient_checkpointing": prec.grad_checkpointing,
        "steps_measured": len(warm),
        "it_per_s": len(warm) / (warm[-1][2] - first_warm[2]),
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30,
        # bakery doctor's estimate of the same bake (bakery/doctor.py; docs/doctor.md), to compare with the peak
        "estimated_vram_gb": vram_estimate(params, 512, "sd15").total / 2**30,
    }


def _child(kind: str, steps: int, vae: str = "tiny") -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--steps", str(steps), "--vae", vae], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"benchmark child {kind} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if "--compare" in sys.argv[1:]:  # real-size SD1.5/SDXL, ours against sd-scripts (bake_compare.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bake_compare

        return bake_compare.main([a for a in sys.argv[1:] if a != "--compare"])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="measured steps per configuration (after epoch 1)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--strict", action="store_true", help="exit 1 when cached < 1.5x uncached")
    ap.add_argument("--skip-cuda", action="store_true")
    ap.add_argument("--one", choices=["cached", "uncached", "cuda"], help=argparse.SUPPRESS)
    ap.add_argument("--vae", choices=["tiny", "sd15"], default="tiny", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = one_cuda(args.steps) if args.one == "cuda" else one_cpu(args.one == "cached", args.steps, args.vae)
        print(json.dumps(result))
        return 0

    report: dict = {"python": platform.python_version(), "machine": platform.machine(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS", "(default)")}
    speedups = {}
    for vae in ("tiny", "sd15"):
        for kind in ("cached", "uncached"):
            report[f"cpu_{vae}_vae_{kind}"] = _child(kind, args.steps, vae)
        speedups[vae] = (report[f"cpu_{vae}_vae_cached"]["steps_per_s"]
                         / report[f"cpu_{vae}_vae_uncached"]["steps_per_s"])
    report["cached_speedup"] = speedups
    for vae, title in (("tiny", "tiny model"), ("sd15", "tiny UNet/text encoder + SD1.5-shaped VAE")):
        print(f"CPU, {title}, LoRA dim 8, batch 2, 64 px, text encoder trained")
        for kind in ("cached", "uncached"):
            r = report[f"cpu_{vae}_vae_{kind}"]
            print(f"  {kind:9s} {r['steps_per_s']:6.2f} steps/s over {r['steps_measured']} steps, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")
        print(f"  VAE encode {report[f'cpu_{vae}_vae_cached']['vae_encode_ms_per_batch']:.1f} ms per batch; "
              f"cached latents speed-up: {speedups[vae]:.2f}x (target >= 1.5x)")
    speedup = speedups["tiny"]
    import importlib.util

    has_cuda = False
    if not args.skip_cuda and importlib.util.find_spec("torch"):
        import torch

        has_cuda = torch.cuda.is_available()
    if has_cuda:
        r = report["cuda"] = _child("cuda", min(args.steps, 20))
        print(f"CUDA ({r['device']}), SD1.5 shape, random weights, 512 px, batch 2, LoRA dim 32, "
              f"{r['precision']}, gradient checkpointing {r['gradient_checkpointing']}")
        print(f"  {r['it_per_s']:.2f} it/s over {r['steps_measured']} steps, peak VRAM {r['peak_vram_gb']:.2f} GB "
              f"(bakery doctor estimated {r['estimated_vram_gb']:.2f} GB)")
    else:
        print("CUDA: no GPU here, skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if args.strict and speedup < 1.5 else 0


if __name__ == "__main__":
    raise SystemExit(main())
