"""The recipe's model keys: what each names, whether it is there, and the known defaults `bakery models pull`
fetches.

Downloads go through `huggingface_hub` (its cache, its progress bar, its resumable `.incomplete` files; `HF_ENDPOINT`
and `HF_HUB_CACHE` as it reads them). It checks a file's size, not its content: the sha256 is checked here, against
the catalogue's pin where it has one, else against the hub's own (an LFS file's ETag is its sha256); a file that
does not match is deleted from the cache and refused. A base model (`train.*`) has no default: it is pulled only
when named (`--repo`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from bakery.recipe.model import Recipe
from bakery.recipe.paths import MODEL_REFS, looks_like_hub_id, path_keys

NOT_MODELS = ("project.workdir", "sources.path", "scrape.export_dir")
SHA256_LENGTH = 64


class ModelError(RuntimeError):
    """A model key that cannot be listed, pulled or set; one line naming the key."""


@dataclass(frozen=True)
class Default:
    """A known default of one key: the hub repository and files; the key names the first file, or their folder."""

    repo: str
    files: tuple[str, ...]
    licence: str
    what: str
    folder: bool = False
    sha256: dict[str, str] = field(default_factory=dict)  # pins: file -> sha256
    also: dict[str, str] = field(default_factory=dict)    # other keys the model needs set (upscale.backend)
    revision: str = "main"


DEFAULTS: dict[str, Default] = {
    "autotag.model": Default("SmilingWolf/wd-swinv2-tagger-v3", ("model.onnx", "selected_tags.csv"), "apache-2.0",
                             "WD14 v3 tagger (SwinV2)", folder=True),
    "masks.checkpoint": Default("plemeri/InSPyReNet", ("ckpt_base.pth",), "mit",
                                "InSPyReNet base checkpoint (transparent-background)"),
    "upscale.model": Default("ai-forever/Real-ESRGAN", ("RealESRGAN_x4plus_anime_6B.pth",), "bsd-3-clause",
                             "RealESRGAN x4plus anime 6B",
                             sha256={"RealESRGAN_x4plus_anime_6B.pth":
                                     "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da"},
                             also={"upscale.backend": "spandrel"}),
    "crops.face_model": Default("deepghs/anime_face_detection", ("face_detect_v1.4_s/model.onnx",), "mit",
                                "deepghs anime face detector (YOLO, ONNX)"),
    "crops.head_model": Default("deepghs/anime_head_detection", ("head_detect_v0.5_s_pruned/model.onnx",), "mit",
                                "deepghs anime head detector (YOLO, ONNX)"),
    "crops.person_model": Default("deepghs/anime_person_detection", ("person_detect_v1.3_s/model.onnx",), "mit",
                                  "deepghs anime person detector (YOLO, ONNX)"),
    "crops.halfbody_model": Default("deepghs/anime_halfbody_detection", ("halfbody_detect_v1.0_s/model.onnx",),
                                    "mit", "deepghs anime half-body detector (YOLO, ONNX)"),
    # The [judges] section (another branch brings it): listed and pulled once the recipe has the key.
    "judges.ccip_model": Default("deepghs/ccip_onnx", tuple(f"ccip-caformer-24-randaug-pruned/{f}" for f in (
        "model_feat.onnx", "model_metrics.onnx", "metrics.json")), "openrail", "CCIP character similarity (caformer)",
        folder=True),
}


def model_keys() -> list[str]:
    """Every key of the recipe that names a model file or folder."""
    return [k for k in path_keys(Recipe) if k not in NOT_MODELS]


def value_of(recipe: Recipe, key: str) -> str | None:
    section, name = key.split(".")
    value = getattr(getattr(recipe, section), name)
    return None if value is None else str(value)


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(recipe: Recipe, key: str) -> dict[str, str]:
    """One row of `bakery models list`: key, value, state (not set / present, size / missing / hub id), source."""
    value, default = value_of(recipe, key), DEFAULTS.get(key)
    if value is None:
        state = "not set"
    elif Path(value).exists():
        state = f"present, {human_bytes(size_of(Path(value)))}"
    elif key in MODEL_REFS and (looks_like_hub_id(value) or value == "tiny"):
        state = "test model" if value == "tiny" else "hub id (fetched by the stage)"
    else:
        state = "MISSING"
    source = (f"default {default.repo}:{'+'.join(default.files)} ({default.licence})" if default else
              "no default: a base model is pulled only when named (--repo)" if key.startswith("train.") else
              "no default: name one")
    return {"key": key, "value": value or "-", "state": state, "source": source}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def pull(key: str, repo: str | None = None, files: tuple[str, ...] = (), cache_dir: Path | None = None) -> Path:
    """Fetch `key`'s default (or `repo`'s `files`) into the hub cache; the path the key should name."""
    if key not in model_keys():
        raise ModelError(f"{key} is not a model key of the recipe (they are: {', '.join(model_keys())})")
    default = DEFAULTS.get(key)
    if repo:  # named by the user: these files (none: the whole repository, its folder)
        default = Default(repo, tuple(files), "see the model card", "named", folder=False)
    if default is None:
        raise ModelError(f"{key} has no default to pull: name one with --repo ORG/NAME [--file FILE]"
                         + (" (a base model is never pulled without being named)" if key.startswith("train.") else ""))
    if not default.files:
        return _snapshot(key, default, cache_dir)
    paths = [_fetch(key, default, name, cache_dir) for name in default.files]
    return paths[0].parent if default.folder else paths[0]


def _fetch(key: str, default: Default, filename: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{default.repo}/{filename}"
    try:
        meta = get_hf_file_metadata(hf_hub_url(default.repo, filename, revision=default.revision, endpoint=endpoint))
        path = Path(hf_hub_download(default.repo, filename, revision=default.revision, cache_dir=cache_dir,
                                    endpoint=endpoint))
    except Exception as exc:  # noqa: BLE001 - the hub's errors are many; the user needs one line
        raise ModelError(f"{key}: cannot fetch {where}: {_one_line(exc)}")
    expected = default.sha256.get(filename) or (meta.etag if len(meta.etag or "") == SHA256_LENGTH else None)
    if expected:
        _check(key, where, path, expected, "pinned" if filename in default.sha256 else "the hub's")
    return path


def _snapshot(key: str, default: Default, cache_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(default.repo, revision=default.revision, cache_dir=cache_dir,
                                      endpoint=os.environ.get("HF_ENDPOINT") or None))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{key}: cannot fetch {default.repo}: {_one_line(exc)}")


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _check(key: str, where: str, path: Path, expected: str, whose: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ModelError(f"{key}: {where} has sha256 {digest.hexdigest()[:16]}…, not {whose} {expected[:16]}…: "
                         "refused and removed from the cache (pull again; if it repeats, the file changed upstream)")


def recipe_value(recipe_file: Path, path_text: str, key: str) -> str:
    """What `bakery models use` writes: a path under the recipe's folder relative to it (portable), another path
    absolute, a hub id as written."""
    path = Path(path_text).expanduser()
    if not path.exists():
        if key in MODEL_REFS and looks_like_hub_id(path_text):
            return path_text
        raise ModelError(f"{key}: {path_text} does not exist")
    path, base = path.resolve(), recipe_file.resolve().parent
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
