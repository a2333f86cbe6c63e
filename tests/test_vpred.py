"""v-prediction and zero terminal SNR: detected, trained on the velocity, written down, evaluated to match.

On the tiny random-weight v-prediction model (bakery/testmodels/tiny_vpred.py), CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bakery.craft.bake import BakeError
from bakery.craft.bake import data as D
from bakery.craft.bake import loop as B
from bakery.craft.bake import optim as O
from bakery.craft.bake import step as SP
from bakery.craft.bake import training as TR
from bakery.craft.bake import validation as V
from bakery.craft.bake.bases import load as F
from bakery.craft.bake.bases import prediction as P
from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.taste import xyz
from bakery.recipe import EvaluateParams
from bakery.testmodels.tiny_vpred import build_tiny_vpred, write_markers
from storage import ContentStore
from tests.test_bake import DATA, TRIGGER, make_trainset, params


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vpred")


@pytest.fixture(scope="module")
def vpred_model(work) -> Path:
    return build_tiny_vpred(work / "tiny-vpred", words=[TRIGGER, "red_dress", "smile", "standing", "outdoors"])


@pytest.fixture(scope="module")
def baked(work, vpred_model) -> B.BakeResult:
    store = ContentStore(work / "store")
    return B.bake(make_trainset(store), params(epochs=1, base_model=str(vpred_model)), image_path=store.path,
                  workdir=work, out_dir=work / "out", state_dir=work / "state", name="chara", data=DATA,
                  bake_key="vpred", validation_steps=4)


# --- detection and the recipe's keys ----------------------------------------------------------


def test_detected_from_marker_keys_metadata_and_scheduler_config(tmp_path):
    assert P.from_checkpoint(["a", "v_pred", "ztsnr"]) == P.Prediction(True, True, "checkpoint keys")
    assert P.from_checkpoint(["a", "v_pred"]) == P.Prediction(True, False, "checkpoint keys")
    assert P.from_checkpoint(["a"], {"modelspec.prediction_type": "v"}).v_pred
    assert P.from_checkpoint(["a"], {}) is None  # says nothing: the config decides
    assert P.read_checkpoint(write_markers(tmp_path / "noob.safetensors")) == P.Prediction(True, True, "checkpoint keys")
    assert P.read_checkpoint(write_markers(tmp_path / "plain.safetensors", v_pred=False, ztsnr=False)) is None
    cfg = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    assert P.from_scheduler_config(cfg) == P.Prediction(True, True, "scheduler config")
    assert P.from_scheduler_config({"prediction_type": "epsilon"}) == P.Prediction()


def test_recipe_keys_override_what_is_found_and_bad_combinations_fail():
    found = P.Prediction(True, True, "checkpoint keys")
    assert P.resolve(found, None, None) == found
    assert P.resolve(P.Prediction(), True, None) == P.Prediction(True, False, "recipe")
    assert P.resolve(found, None, False) == P.Prediction(True, False, "recipe over checkpoint keys")
    with pytest.raises(P.PredictionError, match="train.v_parameterization"):
        P.resolve(P.Prediction(), None, True)  # zero terminal SNR on an epsilon model


def test_velocity_target_and_the_rescaled_schedule():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          **P.training_overrides(P.Prediction(True, True)))
    assert float(sched.alphas_cumprod[-1]) == 0.0  # zero terminal SNR: the last step is pure noise
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 999])
    v = P.target(sched, x0, noise, t, P.Prediction(True, True))
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-5)
    assert torch.allclose(v[2], -x0[2], atol=1e-5)  # at SNR 0 the velocity is minus the picture
    assert P.target(sched, x0, noise, t, P.Prediction()) is noise
    # min-SNR for v: min(SNR, gamma) / (SNR + 1), 0 at SNR 0 (no division by zero)
    w = O.min_snr_weight(t, sched.alphas_cumprod, 5.0, v_prediction=True)
    snr = a.flatten() / (1 - a.flatten())
    assert torch.allclose(w, torch.clamp(snr, max=5.0) / (snr + 1)) and float(w[2]) == 0.0


# --- bake --------------------------------------------------------------------------------------


def test_vpred_bake_writes_it_in_the_metadata(baked):
    _, meta = K.read_kohya(baked.files[1])
    assert meta["ss_v_parameterization"] == "True" and meta["ss_zero_terminal_snr"] == "True"
    assert meta["modelspec.prediction_type"] == "v"
    assert all(np.isfinite(row[2]) for row in baked.losses)


def test_epsilon_bake_writes_epsilon(work):
    store = ContentStore(work / "store")
    res = B.bake(make_trainset(store), params(epochs=1), image_path=store.path, workdir=work,
                 out_dir=work / "out-eps", state_dir=work / "state-eps", name="chara", data=DATA, bake_key="eps")
    _, meta = K.read_kohya(res.files[1])
    assert (meta["ss_v_parameterization"], meta["ss_zero_terminal_snr"]) == ("False", "False")
    assert meta["modelspec.prediction_type"] == "epsilon"


def test_validation_loss_is_measured_against_the_velocity(work, vpred_model):
    """The loss the bake computes equals the UNet's error against sqrt(a)*noise - sqrt(1-a)*x0, written out here."""
    store = ContentStore(work / "store")
    t = TR.prepare_training(make_trainset(store), params(epochs=1, base_model=str(vpred_model), masked_loss=False),
                            image_path=store.path, workdir=work, data=DATA)
    assert t.base.prediction == P.Prediction(True, True, "scheduler config")
    assert t.noise_sched.config.prediction_type == "v_prediction" and float(t.noise_sched.alphas_cumprod[-1]) == 0
    s = t.samples[0]
    with torch.no_grad():
        got = V.validation_picture_loss(t, s, 4)
        lat = t.validation_latents[f"{s.image.image_hash}:{s.bucket}"].repeat(4, 1, 1, 1)
        noise = torch.randn(lat.shape, generator=SP.seeded(t.params.seed, 0, f"validation:{s.image.image_hash}"))
        steps = torch.tensor(V.validation_timesteps(4, 1000))
        a = t.noise_sched.alphas_cumprod[steps].view(-1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        caption = ", ".join(sum(D.split_caption(s.image.caption, t.params.keep_tokens), []))
        pred = SP.predict_noise(t, [s] * 4, [caption] * 4, noisy, steps).float()
        velocity = a.sqrt() * noise - (1 - a).sqrt() * lat
    assert got == pytest.approx(float(((pred - velocity) ** 2).mean()), rel=1e-4)
    assert got != pytest.approx(float(((pred - noise) ** 2).mean()), rel=1e-2)


def test_recipe_key_turns_v_prediction_on_for_a_model_that_does_not_say(work):
    store = ContentStore(work / "store")
    t = TR.prepare_training(make_trainset(store), params(epochs=1, v_parameterization=True), image_path=store.path,
                            workdir=work, data=DATA)
    assert t.base.prediction == P.Prediction(True, False, "recipe")
    assert t.noise_sched.config.prediction_type == "v_prediction" and float(t.noise_sched.alphas_cumprod[-1]) > 0


def test_single_file_marker_keys_are_read_by_use_prediction(work, vpred_model, tmp_path):
    """A single file's markers win over the pipeline's (epsilon) scheduler config."""
    from diffusers import StableDiffusionPipeline

    from bakery.testmodels.tiny_sd15 import build_tiny_sd15

    pipe = StableDiffusionPipeline.from_pretrained(build_tiny_sd15(work / "tiny-eps"), safety_checker=None,
                                                   requires_safety_checker=False)
    base = F.Base(pipe, F.family_for("sd15"), str(write_markers(tmp_path / "noob.safetensors")))
    assert F.use_prediction(base) == P.Prediction(True, True, "checkpoint keys")
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.rescale_betas_zero_snr
    with pytest.raises(BakeError, match="train.v_parameterization"):
        F.use_prediction(F.Base(pipe, F.family_for("sd15"), "elsewhere"), v_parameterization=False)


# --- evaluation --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler_a", "euler", "dpmpp_2m", "ddim"])
def test_sampler_matches_the_model(vpred_model, sampler):
    taster = xyz.Taster(str(vpred_model), "sd15", sampler=sampler, device="cpu")
    cfg = taster.pipe.scheduler.config
    assert (cfg.prediction_type, cfg.rescale_betas_zero_snr, cfg.timestep_spacing) == ("v_prediction", True, "trailing")
    images = taster.render([TRIGGER], "", [1], 2, 5.0, 64, 64)
    assert images[0].shape == (64, 64, 3)


def test_tasting_samples_as_the_lora_was_trained(baked, vpred_model):
    """The LoRA's metadata decides the sampler even when the base is loaded without it (an epsilon config)."""
    from bakery.craft.taste import tasting
    from bakery.manifest import BakeOutput, TrainSet

    folder = vpred_model.parent / "tiny-vpred-copy"
    if not folder.exists():
        import shutil

        shutil.copytree(vpred_model, folder)
        cfg_path = folder / "scheduler" / "scheduler_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(prediction_type="epsilon", rescale_betas_zero_snr=False)  # as a single file loads: it says nothing
        cfg_path.write_text(json.dumps(cfg))
    bake = BakeOutput(name="chara", base_model=str(folder), architecture="sd15", files=baked.files, bake_key="vpred",
                      triggers=[TRIGGER])
    params = EvaluateParams(weights=[0.0, 1.0], seeds=[1], steps=1, width=64, height=64, tags_per_prompt=0,
                            device="cpu", effect_min_ratio=0.0, flexibility_prompts=[])
    last = tasting.read_metadata(baked.files[1])
    inputs = tasting.TasteInputs(bake, dict(baked.files), [1], [TRIGGER], last, TrainSet([], [TRIGGER]))
    result = tasting.taste(inputs, params)
    assert len(result.grids) == 1
    assert result.report.settings["prediction"] == "v-prediction with zero terminal SNR (from LoRA metadata)"
    assert P.from_lora_metadata(last) == P.Prediction(True, True, "LoRA metadata")
    taster = xyz.Taster(str(folder), "sd15", device="cpu", prediction=P.from_lora_metadata(last))
    assert taster.pipe.scheduler.config.prediction_type == "v_prediction"
    assert taster.pipe.scheduler.config.timestep_spacing == "trailing"


def test_noobai_vpred_family_on_the_tiny_sdxl_bakes_and_renders_v(work):
    """NoobAI-XL V-Pred's family: SDXL, v-prediction, zero terminal SNR; the bake and the sampler follow it."""
    from bakery.recipe import parse_recipe
    from tests.tiny_sdxl import build_tiny_sdxl

    recipe = parse_recipe({"train": {"family": "noobai_vpred"}}, work)
    assert (recipe.train.architecture, recipe.train.v_parameterization, recipe.train.zero_terminal_snr) == (
        "sdxl", True, True)
    assert recipe.train.train_text_encoder is False and recipe.buckets.resolution == 1024  # Prodigy: UNet only
    folder = build_tiny_sdxl(work / "sdxl")
    store = ContentStore(work / "store")
    p = params(epochs=1, base_model=str(folder), v_parameterization=True, zero_terminal_snr=True)
    res = B.bake(make_trainset(store), p, image_path=store.path, workdir=work, out_dir=work / "out-xl",
                 state_dir=work / "state-xl", name="chara", data=DATA, bake_key="xl-vpred")
    _, meta = K.read_kohya(res.files[1])
    assert (meta["ss_sdxl"], meta["ss_v_parameterization"], meta["ss_zero_terminal_snr"]) == ("True", "True", "True")
    taster = xyz.Taster(str(folder), "sdxl", device="cpu", prediction=P.from_lora_metadata(meta))
    cfg = taster.pipe.scheduler.config
    assert (cfg.prediction_type, cfg.rescale_betas_zero_snr, cfg.timestep_spacing) == ("v_prediction", True, "trailing")
    taster.load_lora(res.files[1], "e1")
    taster.set_weight(1.0)
    images = taster.render([TRIGGER], "", [1], 2, 5.0, 64, 64)
    assert images[0].shape == (64, 64, 3)


def test_export_kohya_says_v_prediction_from_the_recipe_or_the_checkpoint(tmp_path):
    import tomllib

    from bakery.craft.bake import kohya_dataset as kohya
    from bakery.kohya_export import settings
    from bakery.recipe import parse_recipe

    marked = write_markers(tmp_path / "noob.safetensors")
    s = settings(parse_recipe({"train": {"base_model": str(marked)}}, tmp_path), ["t"], False)
    assert (s.v_parameterization, s.zero_terminal_snr) == (True, True)  # read from the file's markers
    s = settings(parse_recipe({"train": {"base_model": str(marked), "zero_terminal_snr": False}}, tmp_path), ["t"], False)
    assert (s.v_parameterization, s.zero_terminal_snr) == (True, False)  # the recipe wins
    plain = settings(parse_recipe({"train": {"base_model": "x.safetensors"}}, tmp_path), ["t"], False)
    assert (plain.v_parameterization, plain.zero_terminal_snr) == (False, False)
    flat = {k: v for section in kohya.train_network_config(tmp_path, s, False, False).values() for k, v in section.items()}
    assert flat["v_parameterization"] is True and "zero_terminal_snr" not in flat
    tomllib.loads(kohya.to_toml(kohya.train_network_config(tmp_path, s, False, False)))  # writes as TOML
