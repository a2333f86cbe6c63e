"""Training Anima as sd-scripts' anima_train_network.py does, on the tiny Anima (real classes, random weights, CPU):
rectified flow's draws and target, the text encoder's cache, the DiT's prediction, steps that learn, precision."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

from bakery.craft.bake import BakeError
from bakery.craft.bake import data as D
from bakery.craft.bake import precision as PR
from bakery.craft.bake import step as SP
from bakery.craft.bake import training as TR
from bakery.craft.bake import validation as V
from bakery.craft.bake.bases import flow
from bakery.craft.bake.bases.anima import Anima, tiny
from bakery.craft.bake.bases.anima import training as AT
from bakery.craft.bake.bases.anima.training import AnimaText
from bakery.craft.bake.bases.family import Base, TimestepSampling
from bakery.craft.bake.networks import kohya_lora as K
from bakery.recipe import TrainParams, parse_recipe
from storage import ContentStore
from tests.test_bake import CAPTION, DATA, make_trainset

WORDS = ["bakery_girl", "red_dress", "smile", "standing", "outdoors"]


class TinyNetworkAnima(Anima):
    """The Anima family with a LoRA on the DiT's attention projections and MLPs (network.py is anima-lora's: this
    stands in for it so the training half is tested alone)."""

    def network_parts(self, denoiser, text_encoders):
        return [(K.UNET_PREFIX, denoiser, "unet")] if denoiser is not None else []

    def targets(self, model, kind, spec):
        return K.Targets(linear=[n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                                 and n.startswith("transformer_blocks.")])


@functools.cache
def tiny_parts() -> dict:
    # built once: training the tiny T5 tokenizer is not deterministic (the unigram trainer's ties)
    return tiny.components(WORDS)


def tiny_base(family=None) -> Base:
    """A fresh copy of the tiny Anima (the bake moves and wraps its modules)."""
    from diffusers import AnimaAutoBlocks, AnimaModularPipeline

    pipe = AnimaModularPipeline(blocks=AnimaAutoBlocks())
    pipe.update_components(**copy.deepcopy(tiny_parts()))
    return Base(pipe, family or TinyNetworkAnima(), "tiny")


def params(**kw) -> TrainParams:
    base = {"base_model": "tiny", "architecture": "anima", "optimizer": "adamw", "learning_rate": 1e-3,
            "epochs": 1, "batch_size": 2, "network_dim": 4, "network_alpha": 4, "min_snr_gamma": 0,
            "train_text_encoder": False, "shuffle_caption": False, "device": "cpu"}
    return TrainParams(**{**base, **kw})


def prepare(tmp_path, **kw) -> TR.Training:
    store = ContentStore(tmp_path / "store")
    return TR.prepare_training(make_trainset(store), params(**kw), image_path=store.path, workdir=tmp_path,
                               data=DATA, base=tiny_base())


# --- rectified flow: sd-scripts' draws, the noisy input, the target --------------------------------------------


def reference_sigmas(method: str, n: int, seed: int, shift: float, scale: float, h: int, w: int) -> torch.Tensor:
    """sd-scripts' formulas (flux_train_utils.get_noisy_model_input_and_timesteps, docs/anima_train_network.md),
    written out on the global generator seeded as the bake's step generator is."""
    torch.manual_seed(seed)
    if method == "uniform":
        return torch.rand((n,))
    if method == "sigma":  # the shifted discrete schedule 1000/1000 ... 1/1000, picked by floor(u * 1000)
        u = torch.rand((n,))
        grid = torch.linspace(1, 1000, 1000).flip(0) / 1000
        grid = shift * grid / (1 + (shift - 1) * grid)
        return grid[(u * 1000).long()]
    s = torch.sigmoid(torch.randn((n,)) * scale)
    if method == "shift":
        return (s * shift) / (1 + (shift - 1) * s)
    if method == "flux_shift":  # mu linear from 0.5 at 256 to 1.15 at 4096 packed tokens
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * ((h // 2) * (w // 2) - 256)
        return math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    return s


@pytest.mark.parametrize("method", ["sigma", "uniform", "sigmoid", "shift", "flux_shift"])
def test_each_timestep_sampling_draws_what_sd_scripts_draws(method):
    sampling = TimestepSampling(method, shift=3.0, sigmoid_scale=1.5)
    sched = Anima().noise_schedule(tiny_base(Anima()), sampling)
    draws = Anima().timesteps(sched, 4096, torch.Generator().manual_seed(7), (64, 96))
    expected = reference_sigmas(method, 4096, 7, 3.0, 1.5, 64, 96) * 1000
    assert torch.allclose(draws, expected, rtol=1e-5, atol=1e-4)
    assert draws.dtype == torch.float32 and 0 <= draws.min() and draws.max() <= 1000
    again = Anima().timesteps(sched, 4096, torch.Generator().manual_seed(7), (64, 96))
    assert torch.equal(draws, again)  # same seed, same draws: a resumed bake takes the same


def test_shifts_move_the_draws_toward_noise():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    sched = lambda m, s=1.0: flow.FlowSchedule(TimestepSampling(m, shift=s))  # noqa: E731
    plain = flow.timesteps(sched("sigmoid"), 2048, gen(), (64, 64))
    assert abs(float(plain.median()) - 500) < 30  # logit-normal: median sigma 0.5
    assert torch.allclose(flow.timesteps(sched("shift", 1.0), 2048, gen(), (64, 64)), plain)  # shift 1: unchanged
    assert (flow.timesteps(sched("shift", 3.0), 2048, gen(), (64, 64)) > plain).all()
    small = flow.timesteps(sched("flux_shift"), 2048, gen(), (16, 16))  # 64 packed tokens: mu < 0.5
    large = flow.timesteps(sched("flux_shift"), 2048, gen(), (128, 128))  # 4096 tokens: mu = 1.15
    assert (large > small).all()
    grid = flow.discrete_sigmas(1000, 1.0) * 1000
    assert torch.isin(flow.timesteps(sched("sigma"), 512, gen(), (64, 64)), grid).all()


def test_noisy_input_is_the_straight_line_and_the_target_its_velocity():
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn((3, 16, 4, 4), generator=gen), torch.randn((3, 16, 4, 4), generator=gen)
    sched = flow.FlowSchedule()
    t = torch.tensor([0.0, 250.0, 1000.0])
    noisy = sched.add_noise(x, noise, t)
    assert torch.equal(noisy[0], x[0]) and torch.equal(noisy[2], noise[2])
    assert torch.allclose(noisy[1], 0.75 * x[1] + 0.25 * noise[1])
    assert torch.equal(Anima().target(None, sched, x, noise, t), noise - x)
    assert sched.config.num_train_timesteps == 1000 and sched.alphas_cumprod is None


# --- latents and text ------------------------------------------------------------------------------------------


def test_latents_are_the_vae_mode_normalised_by_its_mean_and_std():
    vae = tiny_base().pipe.vae
    pixels = torch.rand((2, 3, 64, 96)) * 2 - 1
    latents = Anima().encode(vae, pixels, "cpu")
    assert latents.shape == (2, 16, 8, 12) and latents.dtype == torch.float32
    with torch.no_grad():
        raw = vae.encode(pixels[:, :, None]).latent_dist.mean[:, :, 0]
    mean, std = (torch.tensor(v).view(1, 16, 1, 1) for v in (vae.config.latents_mean, vae.config.latents_std))
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-5)


def test_cached_text_equals_uncached_and_sd_scripts_512_padding(monkeypatch):
    base = tiny_base()
    captions = ["bakery_girl, red_dress, smile", "smile", "", "bakery_girl, red_dress, smile, standing, outdoors"]
    plain = AnimaText(base.pipe, "cpu", cache=False)(captions)
    monkeypatch.setattr(AT, "CACHE_BATCH", 3)  # announced captions are encoded a few at a time: 2 calls here
    cached = AnimaText(base.pipe, "cpu", cache=True, captions=captions)
    assert cached.unloaded and set(cached.cache) == set(captions)  # every caption encoded up front, Qwen3 unloaded
    got = cached(captions)
    for a, b in zip(plain, got):
        assert a.shape == b.shape
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert torch.equal(got[0][2], torch.zeros_like(got[0][2]))  # the empty caption: no Qwen3 state
    # A caption never announced still encodes (Qwen3 comes back for it, then leaves again).
    assert cached(["standing"])[0].shape[0] == 1 and cached.unloaded
    # Per-batch padding conditions the DiT as sd-scripts' padding of every caption to 512 tokens does.
    pipe, cond = base.pipe, base.pipe.text_conditioner
    q = pipe.tokenizer(captions, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    t5 = pipe.t5_tokenizer(captions, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(input_ids=q.input_ids, attention_mask=q.attention_mask).last_hidden_state
        states[~q.attention_mask.bool()] = 0
        ours = cond(source_hidden_states=got[0], target_input_ids=got[2], target_attention_mask=got[3],
                    source_attention_mask=got[1])
        theirs = cond(source_hidden_states=states, target_input_ids=t5.input_ids,
                      target_attention_mask=t5.attention_mask, source_attention_mask=q.attention_mask)
    assert torch.allclose(torch.nn.functional.pad(ours, (0, 0, 0, 512 - ours.shape[1])), theirs, atol=1e-5)


def test_augmented_captions_keep_the_text_encoder_and_cache_each_caption_once(tmp_path):
    t = prepare(tmp_path, shuffle_caption=True)
    assert not t.text.unloaded and t.text.cache == {}
    t.text(["a, b", "a, b"])
    assert list(t.text.cache) == ["a, b"]
    fixed = prepare(tmp_path / "fixed", caption_dropout_rate=0.1)
    assert fixed.text.unloaded and set(fixed.text.cache) == {CAPTION, ""}


# --- the prediction and the steps --------------------------------------------------------------------------------


def test_prediction_has_the_latents_layout_and_depends_on_the_caption(tmp_path):
    t = prepare(tmp_path)
    noisy = torch.randn((2, 16, 8, 12))
    steps = torch.tensor([200.0, 800.0])
    with torch.no_grad():
        a = t.base.family.predict(t.base, t.prec, noisy, steps, t.text(["smile", "smile"]), [(96, 64)] * 2)
        b = t.base.family.predict(t.base, t.prec, noisy, steps, t.text(["red_dress", "red_dress"]), [(96, 64)] * 2)
    assert a.shape == noisy.shape and not torch.allclose(a, b)


def test_training_steps_learn_the_batch_and_the_lora_gets_gradients(tmp_path):
    t = prepare(tmp_path, learning_rate=1e-2, gradient_checkpointing=True)
    transformer, conditioner = t.base.pipe.transformer, t.base.pipe.text_conditioner
    assert transformer.gradient_checkpointing and conditioner.gradient_checkpointing
    assert not any(p.requires_grad for p in conditioner.parameters())  # frozen with the DiT
    lora = {n: p.detach().clone() for n, p in transformer.named_parameters() if "lora_B" in n}
    assert lora and all(not v.any() for v in lora.values())
    batch = next(iter(D.epoch_batches(t.samples, 2, 42, 1)))
    sample = batch[0]
    with torch.no_grad():
        before = V.validation_picture_loss(t, sample, 4)
    losses = [SP.training_step(t, batch, step)[0] for step in range(1, 13)]
    with torch.no_grad():
        after = V.validation_picture_loss(t, sample, 4)
    assert all(math.isfinite(x) for x in losses)
    changed = [n for n, p in transformer.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert changed == list(lora)  # every LoRA layer of the DiT learnt (through the checkpointed blocks)
    assert after < before * 0.9, (before, after)


def test_two_bakes_take_the_same_draws_and_weights(tmp_path):
    runs = []
    for name in ("a", "b"):
        t = prepare(tmp_path / name, timestep_sampling="flux_shift", ip_noise_gamma=0.1)
        batches = list(D.epoch_batches(t.samples, 2, 42, 1))
        losses = [SP.training_step(t, batches[i % len(batches)], i + 1)[0] for i in range(3)]
        runs.append((losses, {n: p.detach().clone() for n, p in t.base.pipe.transformer.named_parameters()
                              if p.requires_grad}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][n]) for n, v in runs[0][1].items())


# --- refusals and defaults ---------------------------------------------------------------------------------------


def test_fp16_is_refused_for_anima_and_auto_falls_back_to_fp32():
    prec = PR.Precision("cuda", torch.float16, torch.float16, True, True)
    with pytest.raises(BakeError, match="mixed_precision 'fp16' is not shown safe for anima"):
        PR.for_base(prec, "fp16", Anima.fp16, "anima")
    fallback = PR.for_base(prec, "auto", Anima.fp16, "anima")
    assert fallback.weight_dtype == torch.float32 and fallback.autocast is None and not fallback.scaler
    bf16 = PR.Precision("cuda", torch.bfloat16, torch.bfloat16, True, False)
    assert PR.for_base(bf16, "auto", Anima.fp16, "anima") is bf16
    assert PR.for_base(prec, "fp16", True, "sdxl") is prec


@pytest.mark.parametrize(("kw", "message"), [
    ({"min_snr_gamma": 5.0}, "train.min_snr_gamma needs an SNR"),
    ({"loss_type": "huber", "huber_schedule": "snr"}, "train.huber_schedule 'snr'"),
    ({"v_parameterization": True}, "train.v_parameterization and train.zero_terminal_snr"),
])
def test_ddpm_settings_are_refused_for_rectified_flow(tmp_path, kw, message):
    with pytest.raises(BakeError, match=message):
        prepare(tmp_path, **kw)


def test_huber_with_an_exponential_schedule_trains(tmp_path):
    t = prepare(tmp_path, loss_type="huber", huber_schedule="exponential")
    assert math.isfinite(SP.training_step(t, next(iter(D.epoch_batches(t.samples, 2, 42, 1))), 1)[0])


def test_the_anima_family_and_architecture_get_sd_scripts_defaults():
    for train in ({"family": "anima"}, {"architecture": "anima"}):
        recipe = parse_recipe({"project": {"name": "a"}, "train": train}, Path("."))
        t = recipe.train
        assert (t.architecture, t.timestep_sampling, t.discrete_flow_shift, t.sigmoid_scale) == \
            ("anima", "sigmoid", 1.0, 1.0)
        assert t.min_snr_gamma == 0 and not t.train_text_encoder and t.gradient_checkpointing and t.cache_latents
        assert recipe.buckets.resolution == 1024 and not recipe.repeats.sdxl  # rules.md's x1/2 is for SDXL
    written = parse_recipe({"project": {"name": "a"}, "train": {
        "family": "anima", "timestep_sampling": "shift", "discrete_flow_shift": 3.0}}, Path(".")).train
    assert (written.timestep_sampling, written.discrete_flow_shift) == ("shift", 3.0)
