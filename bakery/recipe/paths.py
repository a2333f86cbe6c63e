"""Every path of a recipe resolved against the recipe file's folder, in this one place, as the recipe is read.

Two kinds of path key: those typed `Path` (found by walking the model: a new one is resolved without a line here)
and the model keys typed `str` because they may also name a hub repository (`MODEL_REFS`): such a value is a
local path when it exists beside the recipe, is absolute, starts with `.`/`~`, names a model file, or is not of
the hub's `org/name` form; `"tiny"` (the random-weight test base) and a hub id stay as written.
"""

from __future__ import annotations

import typing
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

# The str keys that name a model by path or hub id. tests/test_recipe_paths.py fails when a model-like key is
# missing here.
MODEL_REFS = ("train.base_model", "train.vae", "train.text_encoder", "train.llm_adapter", "train.t5_tokenizer",
              "autotag.model", "autotag.second_model", "evaluate.likeness_model")
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".sft")
NOT_PATHS = ("tiny",)


def looks_like_hub_id(text: str) -> bool:
    """`org/name`: two non-empty parts, not a file name, not starting like a path."""
    parts = text.split("/")
    return (len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~", "\\"))
            and "\\" not in text and PurePosixPath(text).suffix.lower() not in MODEL_SUFFIXES)


def resolve_ref(value: str | None, base_dir: Path) -> str | None:
    """A model key's value: an absolute path when it names a local path, else as written (a hub id, "tiny")."""
    if not value or value in NOT_PATHS:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    local = base_dir / path
    if local.exists() or not looks_like_hub_id(value):
        return str(local.resolve())
    return value


def resolve_path(value: Path, base_dir: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else (base_dir / value).resolve()


def resolve_paths(section: BaseModel, base_dir: Path, prefix: str = "") -> Any:
    """`section` (the recipe, or one of its sections) with every path key resolved against `base_dir`."""
    update = {}
    for name in type(section).model_fields:
        value, key = getattr(section, name), f"{prefix}{name}"
        new = _resolved(value, key, base_dir)
        if new is not value:
            update[name] = new
    return section.model_copy(update=update) if update else section


def _resolved(value: Any, key: str, base_dir: Path) -> Any:
    if isinstance(value, BaseModel):
        return resolve_paths(value, base_dir, key + ".")
    if isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
        items = [resolve_paths(v, base_dir, key + ".") if isinstance(v, BaseModel) else v for v in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    if isinstance(value, Path):
        new = resolve_path(value, base_dir)
        return value if new == value else new
    if isinstance(value, str) and key in MODEL_REFS:
        new = resolve_ref(value, base_dir)
        return value if new == value else new
    return value


def path_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every path key of a section class, dotted (`sources.path`, `crops.face_model`, `train.base_model`)."""
    keys = []
    for name, field in model.model_fields.items():
        key, args = f"{prefix}{name}", _flat_args(field.annotation)
        sections = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        for section in sections:
            keys += [k for k in path_keys(section, key + ".") if k not in keys]
        if Path in args or key in MODEL_REFS:
            keys.append(key)
    return keys


def _flat_args(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [a for arg in args for a in _flat_args(arg)]
