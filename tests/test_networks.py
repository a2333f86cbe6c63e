"""IA3, DyLoRA and Diag-OFT (rules.md §12): trained with LyCORIS's modules (bakery/craft/bake/networks/lycoris_net.py),
written in LyCORIS's key format under kohya's module names, applied by evaluate as the readers apply them.

The readers' key names (checked on their code): A1111's built-in networks read IA3 as `{name}.weight` +
`{name}.on_input` (network_ia3.py) and OFT as `{name}.oft_blocks` + `{name}.alpha` (network_oft.py);
ComfyUI's OFTAdapter (comfy/weight_adapter/oft.py) reads a 3-D `{name}.oft_blocks` and the `{name}.alpha`
every adapter gets, and maps the same kohya module names as for LoRA (comfy/lora.py model_lora_keys_*);
DyLoRA files are plain LoRA files (`lora_down.weight`, `lora_up.weight`, `alpha`). ComfyUI has no IA3 loader.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bakery.craft.bake.networks import kohya_lora as K
from bakery.craft.bake.networks import lycoris, lycoris_net
from bakery.craft.caption import repeats as R
from bakery.craft.taste.xyz import Taster
from bakery.recipe import TrainParams
from storage import ContentStore
from tests.test_bake import make_trainset, params, run
from tests.test_kohya_lora import _metadata, tiny  # noqa: F401  (tiny: a fixture)
from tests.test_lycoris import _outputs, check_sdxl_file

TYPES = ("ia3", "dylora", "diag-oft")
SPECS = {"ia3": K.NetworkSpec("ia3", 4, 2), "dylora": K.NetworkSpec("dylora", 8, 4),
         "diag-oft": K.NetworkSpec("diag-oft", 2, 1)}


def _attached(pipe, spec):
    """The network on the pipeline's UNet and text encoder, named as the bake names it."""
    out = {}
    for prefix, model, kind in (("lora_unet", pipe.unet, "unet"), ("lora_te", pipe.text_encoder, "te")):
        targets = lycoris_net.find_targets(model, kind, spec)
        lycoris_net.attach(model, prefix, targets, spec)
        out[prefix] = (model, targets)
    return out


def _trained(folder, spec, seed=3):
    """A pipeline carrying the network with weights that are not the identity (as after training)."""
    pipe = Taster(str(folder), "sd15", device="cpu").pipe
    parts = _attached(pipe, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model, _t in parts.values():
            for p in lycoris_net.modules_of(model).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * (0.1 if spec.network_type == "diag-oft" else 0.3))
            model.eval()
    tensors = {}
    for model, _t in parts.values():
        tensors.update(lycoris_net.file_tensors(model))
    return pipe, tensors


# -- the file: key names and shapes the readers take ----------------------------------------------------

@pytest.mark.parametrize("network_type", TYPES)
def test_file_keys_are_lycoris_names_on_kohya_modules(tiny, network_type):  # noqa: F811
    spec = SPECS[network_type]
    pipe, tensors = _trained(tiny, spec)
    groups = lycoris.by_module(tensors)
    # Every module is a kohya name of the base model (the names ComfyUI and A1111 map for LoRA files).
    known = lycoris.kohya_modules({"unet": pipe.unet, "te": [pipe.text_encoder]}, "sd15")
    assert groups and set(groups) <= set(known)
    assert any(n.startswith("lora_te_text_model_encoder_layers_") for n in groups)
    for name, f in groups.items():
        if network_type == "ia3":
            assert set(f) == {"weight", "on_input"} and f["weight"].dim() == 1
            assert name.endswith(("_to_k", "_to_v", "_ff_net_2", "_k_proj", "_v_proj", "_mlp_fc2"))
            assert int(f["on_input"]) == name.endswith(("_ff_net_2", "_mlp_fc2"))  # LyCORIS's ia3 preset
            width = known[name].in_features if int(f["on_input"]) else known[name].out_features
            assert f["weight"].shape[0] == width
        elif network_type == "diag-oft":
            assert set(f) == {"oft_blocks", "alpha"} and f["oft_blocks"].dim() == 3
            n, size, size2 = f["oft_blocks"].shape
            assert size == size2 == 2 and n * size == known[name].weight.shape[0]  # dim = LyCORIS's block size
            assert float(f["alpha"]) == 0  # no norm constraint
        else:
            assert set(f) == {"lora_down.weight", "lora_up.weight", "alpha"}
            assert f["lora_down.weight"].shape[0] == f["lora_up.weight"].shape[1] == spec.dim  # the full rank
            assert float(f["alpha"]) == spec.alpha
            assert f["lora_up.weight"].dim() == known[name].weight.dim()  # 1x1 convs: 4-D, as kohya writes them
    assert lycoris.is_lycoris(tensors) == (network_type != "dylora")  # DyLoRA: diffusers loads it as a LoRA
    meta = _metadata(spec)
    assert meta["ss_network_module"] == "lycoris.kohya" and f'"algo": "{network_type}"' in meta["ss_network_args"]


# -- evaluate applies them: the file at weight 1 is the trained network -----------------------------------

@pytest.mark.parametrize("network_type", TYPES)
def test_file_applied_by_the_taster_reproduces_the_network(tiny, tmp_path, network_type):  # noqa: F811
    spec = SPECS[network_type]
    trained, tensors = _trained(tiny, spec)
    expected = _outputs(trained)
    path = tmp_path / "chara-000002.safetensors"
    K.save_kohya(path, tensors, _metadata(spec))

    taster = Taster(str(tiny), "sd15", device="cpu")
    base = _outputs(taster.pipe)
    taster.load_lora(path, "epoch2")
    assert (taster.merged is None) == (network_type == "dylora")
    taster.set_weight(1.0)
    got = _outputs(taster.pipe)
    for g, want, b in zip(got, expected, base):
        assert (g - b).abs().max() > 0.02  # the network changes the model
        assert (g - want).abs().max() < 0.01 * max(1.0, want.abs().max().item())  # = the trained network
    taster.set_weight(0.5)
    half = _outputs(taster.pipe)
    assert all(0 < (h - b).abs().max() < (g - b).abs().max() for h, g, b in zip(half, got, base))
    taster.set_weight(0.0)
    assert all(torch.allclose(g, b, atol=1e-6) for g, b in zip(_outputs(taster.pipe), base))
    taster.unload_lora()
    assert all(torch.allclose(g, b, atol=1e-6) for g, b in zip(_outputs(taster.pipe), base))


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_k = nn.Linear(12, 8)
        self.proj = nn.Conv2d(6, 8, 1)


@pytest.mark.parametrize("network_type", ["ia3", "diag-oft"])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_delta_from_the_file_is_lycoris_own(network_type, weight):
    """Our ΔW (what evaluate merges) against LyCORIS's module's own at the same multiplier."""
    spec = SPECS[network_type]
    model = _Two()
    mods = lycoris_net.attach(model, "lora_unet", K.Targets(linear=["to_k", "proj"]), spec)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in mods.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    groups = lycoris.by_module(lycoris_net.file_tensors(model))
    for name, m in mods.items():
        w0 = m.org_module[0].weight.detach()
        want = m.get_diff_weight(multiplier=weight)[0].reshape(w0.shape)
        got = weight * lycoris.delta_weight(groups[name], w0.shape, w0)
        assert want.abs().max() > 0.01 and torch.allclose(got, want, atol=1e-5), name


def test_dylora_trains_one_unit_on_top_of_the_ones_below_and_saves_the_full_rank():
    spec = K.NetworkSpec("dylora", 8, 4)  # 2 units of 4
    model = _Two()
    mods = lycoris_net.attach(model, "lora_unet", K.Targets(linear=["to_k"]), spec)
    m = mods["lora_unet_to_k"]
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    x = torch.randn(3, 12)
    down = torch.cat(list(m.down_list)), torch.cat(list(m.up_list), dim=1)
    model.eval()  # eval: the full rank at alpha/dim, what the file's readers apply
    with torch.no_grad():
        want = model.to_k.weight @ x.T + model.to_k.bias[:, None] + spec.alpha / spec.dim * down[1] @ down[0] @ x.T
        assert torch.allclose(model.to_k(x), want.T, atol=1e-5)
    model.train()
    lycoris_net.set_step([model], seed=42, step=1)
    units = m.step_units
    assert 1 <= units <= 2
    model.to_k(x).sum().backward()
    grads = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in m.up_list]
    assert grads == [i == units - 1 for i in range(2)]  # only the top unit of the step learns
    seen = set()
    for step in range(1, 40):  # the draw is (seed, step): the same again, both units over the steps
        lycoris_net.set_step([model], 42, step)
        first = m.step_units
        lycoris_net.set_step([model], 42, step)
        assert m.step_units == first
        seen.add(first)
    assert seen == {1, 2}


# -- a bake of each trains, saves, resumes ------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("networks")


@pytest.mark.parametrize("network_type", TYPES)
def test_bake_trains_and_writes_the_network(work, network_type):
    store = ContentStore(work / "store")
    extra = {"learning_rate": 5e-3} if network_type == "ia3" else {}
    dims = {"dylora": {"network_dim": 8, "network_alpha": 4}, "diag-oft": {"network_dim": 2}}.get(network_type, {})
    p = params(epochs=2, network_type=network_type, **{**dims, **extra})
    res = run(work, p, make_trainset(store), key="net-" + network_type)
    tensors, meta = K.read_kohya(res.files[2])
    first, _ = K.read_kohya(res.files[1])
    assert all(torch.isfinite(v.float()).all() for v in tensors.values())
    moved = [k for k in tensors if not k.endswith(("alpha", "on_input")) and not torch.equal(tensors[k], first[k])]
    assert any(k.startswith("lora_unet_") for k in moved) and any(k.startswith("lora_te_") for k in moved)
    assert meta["ss_network_module"] == "lycoris.kohya" and network_type in meta["ss_network_args"]
    # Killed after epoch 1 and resumed: epoch 2 comes out the same as the uninterrupted bake's.
    state = work / "state" / f"net-{network_type}" / "state.pt"
    assert state.exists()
    again = run(work, p, make_trainset(store), key="net-" + network_type)
    assert again.resumed_from_epoch == 2 and not again.losses


def test_resumed_lycoris_state_takes_the_same_next_step(work, tmp_path):
    from bakery.craft.bake import data as D
    from bakery.craft.bake import state as ST
    from bakery.craft.bake import step as SP
    from bakery.craft.bake import training as TR
    from tests.test_bake import DATA

    store = ContentStore(work / "store")
    ts, p = make_trainset(store), params(epochs=2, network_type="dylora", network_dim=8, network_alpha=4)

    def fresh():
        return TR.prepare_training(ts, p, image_path=store.path, workdir=work, data=DATA)

    a = fresh()
    batches = D.epoch_batches(a.samples, DATA.batch_size, p.seed, 1)
    for step, batch in enumerate(batches, 1):
        SP.training_step(a, batch, step)
    state = tmp_path / ST.STATE_FILE
    ST.save_state(state, a, bake_key="rt", epoch=1, step=len(batches), files={})
    nxt = D.epoch_batches(a.samples, DATA.batch_size, p.seed, 2)[0]
    want = SP.training_step(a, nxt, len(batches) + 1)
    b = fresh()
    assert ST.resume_state(state, b, "rt")[0] == 1
    assert SP.training_step(b, nxt, len(batches) + 1) == pytest.approx(want, abs=1e-6)


# -- the recipe: the guide's numbers ------------------------------------------------------------------

def test_recipe_defaults_and_checks_are_the_guides():
    d = TrainParams(network_type="dylora")
    assert (d.network_dim, d.network_alpha) == (64, 32)
    assert TrainParams(network_type="dylora", network_dim=16, network_alpha=8).network_dim == 16
    assert TrainParams(network_type="diag-oft").network_dim == 2
    assert TrainParams(network_type="ia3", optimizer="adamw").effective_learning_rate == 5e-3
    assert TrainParams(network_type="ia3").effective_learning_rate == 1.0  # Prodigy
    assert TrainParams(network_type="lora", optimizer="adamw").effective_learning_rate == 1e-4
    for bad, words in [({"network_type": "dylora", "network_dim": 30}, "multiple of 4"),
                       ({"network_type": "diag-oft", "network_dim": 1}, "must be 2 for diag-oft"),
                       ({"network_type": "ia3", "optimizer": "adamw", "learning_rate": 1e-4}, "between 0.005 and 0.01")]:
        with pytest.raises(ValidationError, match=words):
            TrainParams(**bad)
    assert R.multiplier(ia3=True) == 0.5 and R.multiplier(sdxl=True, ia3=True) == 0.25  # IA3: half the steps
    from bakery.recipe import RepeatsParams
    from tasks.caption.prune import repeat_settings

    def mult(**train):
        return repeat_settings({"repeats": RepeatsParams().model_dump(),
                                "train": TrainParams(min_snr_gamma=0, **train).model_dump()}).multiplier

    assert mult(network_type="ia3") == 0.5 and mult(network_type="dylora") == 1.0  # what the prune stage plans with


# -- a real run: bake then evaluate, as for every other network -----------------------------------------

@pytest.mark.usefixtures("prefect_server")
def test_ia3_dylora_and_diag_oft_bakes_are_evaluated(tmp_path):
    from typer.testing import CliRunner

    from bakery.cli import app
    from storage import Catalog
    from tests.test_errors import make_project

    recipe = make_project(tmp_path, "ia3")
    text = recipe.read_text().replace("learning_rate = 0.001", "learning_rate = 0.005")
    settings = {"ia3": "", "dylora": "", "diag-oft": "network_dim = 2\n"}
    for network, extra in settings.items():
        recipe.write_text(text.replace('network_type = "ia3"', f'network_type = "{network}"\n{extra}')
                          .replace("network_dim = 4\n", "" if extra else "network_dim = 4\n"))
        result = CliRunner().invoke(app, ["run", str(recipe)])
        assert result.exit_code == 0, result.output
        with Catalog.open(tmp_path / "work", read_only=True) as cat:
            run_row = cat.last_run()
            stages = {s["stage"]: s for s in cat.stage_table(run_row["run_id"])}
            key = cat.rows("SELECT eval_key FROM evaluations WHERE run_id = ?", [run_row["run_id"]])[0]["eval_key"]
            ev = cat.evaluation(eval_key=key)
        assert stages["bake"]["status"] == "ran" and stages["evaluate"]["status"] == "ran", (network, stages)
        assert {m["weight"] for m in ev["metrics"]} == {0.0, 1.0}
    # Each run baked its own network (a new bake: the network type is part of the bake's key).
    algos = {json.loads(K.read_kohya(f)[1]["ss_network_args"])["algo"]
             for f in (tmp_path / "work" / "bakes").glob("*/*.safetensors")}
    assert algos == set(settings)


@pytest.mark.parametrize("network_type", ["ia3", "diag-oft"])
def test_sdxl_file_in_kohya_sgm_names_reproduces_the_network(tmp_path, network_type):
    """SDXL: the UNet named in kohya's sgm layout, two text encoders (`lora_te1_`/`lora_te2_`)."""
    from tests.tiny_sdxl import build_tiny_sdxl

    folder = build_tiny_sdxl(tmp_path / "sdxl")
    spec = SPECS[network_type]
    trained = Taster(str(folder), "sdxl", device="cpu").pipe
    tensors, gen = {}, torch.Generator().manual_seed(3)
    for prefix, model, kind in [("lora_unet", trained.unet, "unet"), ("lora_te1", trained.text_encoder, "te"),
                                ("lora_te2", trained.text_encoder_2, "te")]:
        lycoris_net.attach(model, prefix, lycoris_net.find_targets(model, kind, spec, sgm=kind == "unet"), spec)
        with torch.no_grad():
            for p in lycoris_net.modules_of(model).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        model.eval()
        tensors.update(lycoris_net.file_tensors(model))
    assert any(k.startswith("lora_unet_input_blocks_") for k in tensors) and any(k.startswith("lora_te2_") for k in tensors)
    path = tmp_path / "xl.safetensors"
    K.save_kohya(path, tensors, {})

    check_sdxl_file(folder, path, trained, tensors, min_effect=0.01)
