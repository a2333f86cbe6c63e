"""The bake itself on the tiny SD1.5-shaped model, CPU: captions, batches, losses, files, resume."""

from __future__ import annotations

import io
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from bakery.craft.bake import BakeError
from bakery.craft.bake import data as D
from bakery.craft.bake import loop as B
from bakery.craft.bake import optim as O
from bakery.craft.bake import precision as PR
from bakery.craft.bake import state as ST
from bakery.craft.bake import step as SP
from bakery.craft.bake import training as TR
from bakery.craft.bake.bases import load as F
from bakery.craft.bake.bases import sd_unet as SD
from bakery.craft.bake.networks import kohya_lora as K
from bakery.manifest import TrainImage, TrainSet
from bakery.recipe import RecipeError, TrainParams, parse_recipe
from storage import ContentStore
from tests.images import gradient

TRIGGER = "bakery_girl"
CAPTION = f"{TRIGGER}, red_dress, smile, standing, outdoors"
DATA = D.DataConfig(resolution=96, min_side=64, max_side=128, step=32, batch_size=2)
SIZES = [(96, 96), (64, 128), (128, 64), (96, 96)]


def make_trainset(store: ContentStore, repeats: int = 2, masks: dict[int, int] | None = None,
                  reg: int = 0) -> TrainSet:
    """Prepared images in the content store, as the prune stage hands them over."""
    images = []
    for i, (w, h) in enumerate(SIZES):
        buf = io.BytesIO()
        gradient(w, h, seed=i).save(buf, "PNG")
        image_hash = store.put_bytes(buf.getvalue()).sha256
        mask_hash = ""
        if masks and i in masks:
            mbuf = io.BytesIO()
            Image.new("L", (w, h), masks[i]).save(mbuf, "PNG")
            mask_hash = store.put_bytes(mbuf.getvalue()).sha256
        images.append(TrainImage("chara", f"img{i}", image_hash, CAPTION, repeats, mask_hash))
    for i in range(reg):
        buf = io.BytesIO()
        gradient(96, 96, seed=100 + i).save(buf, "PNG")
        images.append(TrainImage("chara", f"reg{i}", store.put_bytes(buf.getvalue()).sha256,
                                 "red_dress, smile", 1, is_reg=True))
    return TrainSet(images, [TRIGGER])


def params(**kw) -> TrainParams:
    base = {"base_model": "tiny", "optimizer": "adamw", "learning_rate": 1e-3, "epochs": 2, "batch_size": 2,
            "network_dim": 4, "network_alpha": 2, "conv_dim": 4, "conv_alpha": 1}
    return TrainParams(**{**base, **kw})


def run(tmp: Path, p: TrainParams, trainset: TrainSet | None = None, key: str = "k", **kw) -> B.BakeResult:
    store = ContentStore(tmp / "store")
    trainset = trainset or make_trainset(store)
    return B.bake(trainset, p, image_path=store.path, workdir=tmp, out_dir=tmp / "out" / key,
                  state_dir=tmp / "state" / key, name="chara", data=DATA, bake_key=key, **kw)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One work dir for the module: the tiny model and latent cache are built once."""
    return tmp_path_factory.mktemp("bake")


# --- pure parts -------------------------------------------------------------------------


def test_caption_shuffle_keeps_the_head():
    rng = random.Random(0)
    outs = {D.process_caption("trig, a, b, c, d", rng, keep_tokens=1) for _ in range(30)}
    assert len(outs) > 3 and all(o.startswith("trig, ") for o in outs)
    assert all(sorted(o.split(", ")) == ["a", "b", "c", "d", "trig"] for o in outs)
    # `|||` marks the head instead of keep_tokens.
    outs = {D.process_caption("trig, outfit ||| a, b, c", rng, keep_tokens=0) for _ in range(30)}
    assert all(o.startswith("trig, outfit, ") for o in outs) and len(outs) > 2
    assert D.process_caption("trig, a", rng, caption_dropout_rate=1.0) == ""
    assert D.process_caption("trig, a, b", rng, tag_dropout_rate=1.0) == "trig"
    # Token warmup: from 2 tags at step 0 to all of them at step 10.
    warm = dict(keep_tokens=1, shuffle=False, token_warmup_min=2, token_warmup_step=10)
    assert D.process_caption("trig, a, b, c, d", rng, step=0, **warm) == "trig, a"
    assert D.process_caption("trig, a, b, c, d", rng, step=10, **warm) == "trig, a, b, c, d"


def test_batches_come_from_one_bucket_with_repeats(tmp_path):
    store = ContentStore(tmp_path / "store")
    ts = make_trainset(store, repeats=3)
    samples = D.plan_samples(ts, store.path, DATA)
    assert sorted({s.bucket for s in samples}) == [(64, 128), (96, 96), (128, 64)]
    batches = D.epoch_batches(samples, 2, seed=1, epoch=1)
    assert all(len({s.bucket for s in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 4 * 3  # every image `repeats` times
    assert D.epoch_batches(samples, 2, 1, 1) == batches and D.epoch_batches(samples, 2, 1, 2) != batches


def test_loss_functions_and_weights():
    pred, target = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 3.0)
    c = torch.tensor([0.1, 1.0])
    assert torch.allclose(O.conditional_loss(pred, target, "l2", c), torch.full_like(pred, 9.0))
    hub = O.conditional_loss(pred, target, "huber", c)
    assert torch.allclose(hub[1], torch.full((1, 2, 2), 2 * 1.0 * ((9 + 1) ** 0.5 - 1)))
    sl1 = O.conditional_loss(pred, target, "smooth_l1", c)
    assert torch.allclose(sl1[0], torch.full((1, 2, 2), 2 * ((9 + 0.01) ** 0.5 - 0.1)))
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    t = torch.tensor([10, 999])
    w = O.min_snr_weight(t, ac, 5.0)
    assert w[0] < 1.0 and w[1] == 1.0  # low noise (high SNR) is down-weighted, high noise is not
    snr_c = O.huber_c("snr", 0.1, t, ac, 1000)
    assert snr_c[0] > snr_c[1] >= 0.1
    assert torch.allclose(O.huber_c("exponential", 0.1, torch.tensor([0, 1000]), ac, 1000), torch.tensor([1.0, 0.1]))


def test_recipe_profiles_and_bad_combinations(tmp_path):
    r = parse_recipe({"train": {"profile": "sdxl_12gb", "batch_size": 2}}, tmp_path)
    assert r.train.optimizer == "prodigy" and not r.train.train_text_encoder and r.train.batch_size == 2
    assert r.train.effective_lr_scheduler == "cosine"
    assert parse_recipe({"train": {"optimizer": "adamw"}}, tmp_path).train.effective_lr_scheduler == "cosine_with_restarts"
    assert parse_recipe({"train": {"optimizer": "came"}}, tmp_path).train.effective_lr_scheduler == "rex"
    rex = [O.rex_factor(s, 0, 10) for s in range(11)]
    assert rex[0] == 1.0 and rex[10] == 0.0 and all(a > b for a, b in zip(rex, rex[1:]))
    assert rex[5] == pytest.approx(0.5 / 0.75)  # REX stays above linear decay mid-way
    for bad, msg in [({"network_type": "lokr", "network_dim": 64}, "network_dim must be <= 32"),
                     ({"train_unet": False, "train_text_encoder": False}, "nothing to train"),
                     ({"loss_type": "mse"}, "train.loss_type: must be one of"),
                     ({"device": "cpu", "optimizer": "adamw8bit"}, "adamw8bit needs CUDA"),
                     ({"device": "cpu", "mixed_precision": "bf16"}, "bf16 needs CUDA"),
                     ({"base_model": "tiny", "architecture": "sdxl"}, "SD1.5-shaped")]:
        with pytest.raises(RecipeError, match=msg):
            parse_recipe({"train": bad}, tmp_path)


def test_missing_model_and_cpu_only_options_fail_clearly(tmp_path):
    with pytest.raises(BakeError, match="train.base_model is not set"):
        F.load_base(None, tmp_path)
    with pytest.raises(BakeError, match="no such file"):
        F.load_base(str(tmp_path / "nope.safetensors"), tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(BakeError, match="cannot load train.base_model .*broken.safetensors"):
        F.load_base(str(tmp_path / "broken.safetensors"), tmp_path)
    with pytest.raises(BakeError, match="adamw8bit' needs CUDA"):
        O.make_optimizer("adamw8bit", [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4}],
                         weight_decay=0.0, d_coef=1.0, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BakeError, match="needs CUDA"):
            PR.choose_precision("cpu", "bf16", None)
        assert PR.choose_precision("auto", "auto", None).device == "cpu"
    else:  # the CUDA defaults: mixed precision and gradient checkpointing on
        prec = PR.choose_precision("auto", "auto", None)
        assert prec.autocast is not None and prec.grad_checkpointing


# --- training on the tiny model ---------------------------------------------------------


def _render(pipe, clip_skip: int = 2):
    """Prompt embeddings with kohya's clip skip (diffusers' own `clip_skip` reads `text_model`,
    which transformers 5's CLIPTextModel no longer has)."""
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        enc = SD.TextEncoder(pipe, "sd15", clip_skip, "cpu", cache=False)
        pos, neg = enc([TRIGGER])[0], enc([""])[0]
        return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=2, height=64, width=64,
                    output_type="np", generator=torch.Generator().manual_seed(1)).images


def test_bake_writes_kohya_files_that_reproduce_the_network(work):
    p = params()
    store = ContentStore(work / "store")
    ts = make_trainset(store)
    base = F.load_base("tiny", work, words=ts.triggers)
    res = B.bake(ts, p, image_path=store.path, workdir=work, out_dir=work / "out" / "a", state_dir=work / "state" / "a",
                 name="chara", data=DATA, bake_key="a", base=base)
    assert res.steps == 8 and len(res.losses) == 8 and all(l[2] > 0 for l in res.losses)
    assert sorted(res.files) == [1, 2] and Path(res.files[2]).name == "chara-000002.safetensors"
    assert res.latent_cache_misses == 4 and res.latent_cache_hits == 12  # encoded once per image

    tensors, meta = K.read_kohya(res.files[2])
    assert meta["ss_epoch"] == "2" and meta["ss_steps"] == "8" and meta["ss_num_train_images"] == "8"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_chara": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(meta["ss_tag_frequency"])["2_chara"][TRIGGER] == 4
    assert meta["ss_optimizer"].endswith("AdamW") and meta["ss_seed"] == "42" and meta["ss_resolution"] == "(96, 96)"
    assert meta["modelspec.trigger_phrase"] == TRIGGER and TRIGGER in meta["ss_training_comment"]
    assert any(k.startswith("lora_te_text_model_") for k in tensors)

    # The trained network's own output vs the file loaded in diffusers at weight 1.0.
    base.pipe.unet.eval()
    base.pipe.text_encoder.eval()
    with torch.no_grad():
        expected = _render(base.pipe)
    from diffusers import StableDiffusionPipeline

    fresh = StableDiffusionPipeline.from_pretrained(base.source, safety_checker=None)
    plain = _render(fresh)
    fresh.load_lora_weights(res.files[2])
    got = _render(fresh)
    assert abs(got - plain).max() > 1e-3
    assert abs(got - expected).max() < 5e-3

    # A second bake of the same images reuses every cached latent.
    again = run(work, params(epochs=1), ts, key="a2")
    assert again.latent_cache_misses == 0 and again.latent_cache_hits == 8


_CHILD = """
import os, signal, sys, json
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_bake import run, params
log = open({log!r}, "a")
def on_step(info):
    log.write(json.dumps([info.step, info.epoch, info.loss]) + "\\n"); log.flush()
    if info.step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: nothing gets to clean up
run(Path({work!r}), params(epochs=3), key="resume", on_step=on_step)
"""


def test_resume_after_kill_matches_uninterrupted_run(work):
    full = run(work, params(epochs=3), key="full")
    assert full.resumed_from_epoch == 0
    log = work / "child.jsonl"
    # The child computes with as many threads as this process (float sums depend on the split).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    code = _CHILD.format(root=str(Path(__file__).parent.parent), log=str(log), kill_at=6, work=str(work))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s for s, _, _ in killed] == [1, 2, 3, 4, 5, 6]
    # Same recipe, another process: the same loss curve (seeded, deterministic on CPU).
    assert [l for _, _, l in killed] == pytest.approx([l[2] for l in full.losses[:6]], abs=1e-5)

    resumed = run(work, params(epochs=3), key="resume")
    assert resumed.resumed_from_epoch == 1  # epoch 1's state; epoch 2 was cut at step 6
    assert [l[0] for l in resumed.losses] == [5, 6, 7, 8, 9, 10, 11, 12]
    assert [l[2] for l in resumed.losses] == pytest.approx([l[2] for l in full.losses[4:]], abs=1e-5)
    a, _ = K.read_kohya(full.files[3])
    b, _ = K.read_kohya(resumed.files[3])
    assert a.keys() == b.keys()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-3
    # A finished bake asked again (its Prefect result lost) trains nothing and hands back its files.
    done = run(work, params(epochs=3), key="resume")
    assert done.resumed_from_epoch == 3 and not done.losses and done.files == resumed.files


def _network_weights(t: TR.Training) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {f"{prefix}.{k}": v.detach().clone() for prefix, model, _t in t.network
            for k, v in get_peft_model_state_dict(model).items()}


def test_one_training_step_moves_the_network_and_not_the_base(work):
    store = ContentStore(work / "store")
    t = TR.prepare_training(make_trainset(store), params(), image_path=store.path, workdir=work, data=DATA)
    models = [m for _p, m, _t in t.network]
    assert [p for p, _m, _t in t.network] == ["lora_unet", "lora_te"]
    frozen = {(i, n): p.detach().clone() for i, m in enumerate(models) for n, p in m.named_parameters()
              if not p.requires_grad}
    before = _network_weights(t)
    assert frozen and before and all(not v.any() for k, v in before.items() if "lora_B" in k)  # up starts at 0

    loss, lr = SP.training_step(t, D.epoch_batches(t.samples, DATA.batch_size, 42, 1)[0], 1)
    assert math.isfinite(loss) and loss > 0 and lr == pytest.approx(1.2e-3)  # batch 2: lr x1.2 (rules.md §12)
    after = _network_weights(t)
    ups = [k for k in before if "lora_B" in k]
    skipped = "lora_te.encoder.layers.1."  # clip skip 2: the text encoder's last layer is not used
    assert {k for k in ups if after[k].any()} == {k for k in ups if not k.startswith(skipped)}
    assert any(k.startswith("lora_te.") for k in ups) and any(k.startswith(skipped) for k in ups)
    assert all(torch.equal(p, frozen[i, n]) for i, m in enumerate(models) for n, p in m.named_parameters()
               if not p.requires_grad)  # the base is untouched
    assert all(p.grad is None for p in t.trainable)  # the step leaves no gradient behind


def test_save_state_then_resume_state_takes_the_same_next_step(work, tmp_path):
    store = ContentStore(work / "store")
    ts, p = make_trainset(store), params(epochs=2)

    def fresh() -> TR.Training:
        return TR.prepare_training(ts, p, image_path=store.path, workdir=work, data=DATA)

    a = fresh()
    step = 0
    for batch in D.epoch_batches(a.samples, DATA.batch_size, p.seed, 1):
        step += 1
        SP.training_step(a, batch, step)
    epoch_file = ST.save_epoch(a, tmp_path / "chara-000001.safetensors", name="chara", epoch=1, step=step,
                               session_id="rt")
    state = tmp_path / ST.STATE_FILE
    ST.save_state(state, a, bake_key="rt", epoch=1, step=step, files={1: epoch_file, 0: str(tmp_path / "gone")})
    first_of_epoch_2 = D.epoch_batches(a.samples, DATA.batch_size, p.seed, 2)[0]
    uninterrupted = SP.training_step(a, first_of_epoch_2, step + 1)

    b = fresh()
    assert ST.resume_state(tmp_path / "none.pt", b, "rt") == (0, {})
    assert ST.resume_state(state, b, "another bake") == (0, {})  # not this bake's state: start afresh
    wa, wb = _network_weights(a), _network_weights(b)
    assert wa.keys() == wb.keys() and not all(torch.equal(wa[k], wb[k]) for k in wa)  # b is still untrained
    assert ST.resume_state(state, b, "rt") == (1, {1: epoch_file})  # files gone from disk are dropped
    resumed = SP.training_step(b, first_of_epoch_2, step + 1)
    assert resumed == uninterrupted  # same loss and learning rate, to the bit
    wa, wb = _network_weights(a), _network_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == step + 1


def test_all_black_masks_mean_no_loss(work):
    """Masked loss: a mask that excludes every pixel leaves nothing to learn."""
    store = ContentStore(work / "store")
    ts = make_trainset(store, masks={i: 0 for i in range(4)})
    res = run(work, params(epochs=1, weight_decay=0.0), ts, key="masked")
    assert all(l[2] == 0.0 for l in res.losses)
    tensors, _ = K.read_kohya(res.files[1])
    assert all(not v.any() for k, v in tensors.items() if k.endswith("lora_up.weight"))
    half = run(work, params(epochs=1), make_trainset(store, masks={0: 255, 1: 128}), key="half")
    assert all(l[2] > 0 for l in half.losses)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adamw", "lr_scheduler": "cosine_with_restarts", "lr_restarts": 1, "network_dim": 8},
        {"optimizer": "prodigy", "learning_rate": None, "loss_type": "huber", "huber_schedule": "snr",
         "noise_offset": 0.1, "ip_noise_gamma": 0.1, "flip_aug": True, "cache_latents": False,
         "lr_warmup_steps": 2, "lr_scheduler": "constant"},
        {"optimizer": "came", "loss_type": "smooth_l1", "huber_schedule": "exponential", "multires_noise_iterations": 3,
         "lr_scheduler": None, "train_text_encoder": False,
         "caption_dropout_rate": 0.5, "tag_dropout_rate": 0.2, "token_warmup_step": 4, "min_snr_gamma": 0},
    ],
    ids=["adamw-restarts", "prodigy-huber-noise-flip-uncached", "came-rex-smoothl1-multires-unet-only"],
)
def test_training_options(work, options):
    store = ContentStore(work / "store")
    res = run(work, params(epochs=1, **options), make_trainset(store, reg=2), key="opt-" + options["optimizer"])
    assert res.steps == 5 and all(l[2] > 0 for l in res.losses)
    tensors, meta = K.read_kohya(res.files[1])
    assert meta["ss_num_reg_images"] == "2" and meta["ss_loss_type"] == options.get("loss_type", "l2")
    assert meta["ss_lr_scheduler"] == params(**options).effective_lr_scheduler
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_chara": {"n_repeats": 1, "img_count": 2}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_chara": {"n_repeats": 2, "img_count": 4}}
    assert any(k.startswith("lora_te_") for k in tensors) == options.get("train_text_encoder", True)
    if not options.get("cache_latents", True):
        assert res.latent_cache_hits == res.latent_cache_misses == 0
    if options["lr_scheduler"] == "cosine_with_restarts":  # 2 cycles of 2.5 steps: the rate rises again
        lrs = [l[3] for l in res.losses]
        assert lrs[0] == pytest.approx(1.2e-3) and min(lrs[1:3]) < lrs[3]  # batch 2: lr x1.2 (rules.md §12)
    if options["lr_scheduler"] is None:  # REX decays every step
        lrs = [l[3] for l in res.losses]
        assert all(a > b for a, b in zip(lrs, lrs[1:]))
    if options["lr_scheduler"] == "constant":  # warmup over 2 steps, then Prodigy's d * 1.0
        assert res.losses[0][3] < res.losses[-1][3]


@pytest.mark.parametrize("network_type", ["locon", "dora", "loha", "lokr"])
def test_network_types_train_and_save_kohya_names(work, network_type):
    store = ContentStore(work / "store")
    res = run(work, params(epochs=1, network_type=network_type), make_trainset(store), key="net-" + network_type)
    tensors, meta = K.read_kohya(res.files[1])
    suffixes = {k.split(".", 1)[1] for k in tensors}
    want = {"locon": "lora_down.weight", "dora": "dora_scale", "loha": "hada_w1_a", "lokr": "lokr_w1"}[network_type]
    assert want in suffixes
    if network_type != "dora":  # the ResNet convs are covered
        assert any(k.startswith("lora_unet_down_blocks_0_resnets_0_conv1.") for k in tensors)
    assert all(torch.isfinite(v.float()).all() for v in tensors.values())


def test_sdxl_bake_writes_te1_te2_and_loads_in_diffusers(work):
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_sdxl import build_tiny_sdxl

    folder = build_tiny_sdxl(work / "sdxl")
    store = ContentStore(work / "store")
    base = F.load_base(str(folder), work)
    assert base.architecture == "sdxl"
    res = B.bake(make_trainset(store), params(epochs=1, base_model=str(folder)), image_path=store.path, workdir=work,
                 out_dir=work / "out" / "xl", state_dir=work / "state" / "xl", name="chara", data=DATA, bake_key="xl",
                 base=base)
    tensors, meta = K.read_kohya(res.files[1])
    prefixes = {k.split("_text_model")[0] for k in tensors if k.startswith("lora_te")}
    assert prefixes == {"lora_te1", "lora_te2"}
    # kohya names SDXL's UNet in the original sgm layout (what A1111/ComfyUI expect for SDXL).
    unet_names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q" in unet_names  # 1 layer per block
    assert "lora_unet_output_blocks_0_1_proj_in" in unet_names and "lora_unet_middle_block_1_proj_out" in unet_names
    assert not any("down_blocks" in n or "up_blocks" in n for n in unet_names)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_sdxl"] == "True"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"

    def render(pipe):
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            return pipe(TRIGGER, num_inference_steps=2, height=64, width=64, output_type="np",
                        generator=torch.Generator().manual_seed(1)).images

    for m in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
        m.eval()
    expected = render(base.pipe)
    fresh = StableDiffusionXLPipeline.from_pretrained(folder)
    plain = render(fresh)
    fresh.load_lora_weights(res.files[1])
    got = render(fresh)
    assert abs(got - plain).max() > 1e-3 and abs(got - expected).max() < 5e-3


def test_gradient_checkpointing_trains_the_same_weights(work):
    """The CUDA profiles turn checkpointing on: it must not change what is learned (LoRA grads included)."""
    store = ContentStore(work / "store")
    ts = make_trainset(store)
    plain = run(work, params(epochs=1), ts, key="ckpt-off")
    ckpt = run(work, params(epochs=1, gradient_checkpointing=True), ts, key="ckpt-on")
    assert [l[2] for l in ckpt.losses] == pytest.approx([l[2] for l in plain.losses], abs=1e-3)
    a, _ = K.read_kohya(plain.files[1])
    b, _ = K.read_kohya(ckpt.files[1])
    assert any(v.any() for k, v in b.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight"))
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-3


def test_external_vae_and_text_embedding_cache(work):
    base = F.load_base("tiny", work, words=[TRIGGER])
    with_vae = F.load_base("tiny", work, vae=str(Path(base.source) / "vae"), words=[TRIGGER])
    assert with_vae.pipe.vae is not base.pipe.vae and D.module_id(with_vae.pipe.vae) == D.module_id(base.pipe.vae)
    with pytest.raises(BakeError, match="cannot load train.vae"):
        F.load_base("tiny", work, vae=str(work / "no-vae"), words=[TRIGGER])
    # Frozen text encoder: each distinct caption is encoded once.
    enc = SD.TextEncoder(base.pipe, "sd15", 2, "cpu", cache=True)
    first, _ = enc([TRIGGER, "red_dress", TRIGGER])
    assert sorted(enc.cache) == sorted([TRIGGER, "red_dress"]) and torch.equal(first[0], first[2])
    again, _ = enc([TRIGGER])
    assert torch.equal(again[0], first[0]) and len(enc.cache) == 2
    assert SD.TextEncoder(base.pipe, "sd15", 2, "cpu", cache=False).cache is None
