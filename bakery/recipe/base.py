"""The recipe's shared ground: the section base class, names, RecipeError and the one-line error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RecipeError(ValueError):
    """A recipe that cannot be used; `problems` holds one line per bad key."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class _Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _describe(err: dict[str, Any]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind == "union_tag_not_found":
        return f"'{ctx.get('discriminator', 'kind').strip(chr(39))}' is missing"
    if kind == "union_tag_invalid":
        return f"kind must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "string_pattern_mismatch":
        return f"must contain only letters, digits, '_', '-', '.', got {value!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg}, got {value!r}" if kind != "value_error" and not isinstance(value, dict) else msg


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("folder", "danbooru", "gelbooru"):  # discriminator tags add nothing for the user
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(recipe)"


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: `train.network_dim: must be > 0, got -4`."""
    return [f"{_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]


def _as_train_keys(exc: ValidationError) -> str:
    """A [train] validation's problems named as keys under [train], on one line."""
    return "; ".join(line.replace("(recipe): ", "train: ", 1) if line.startswith("(recipe)") else f"train.{line}"
                     for line in format_errors(exc))


def stage_params_json(params: BaseModel | dict[str, Any]) -> str:
    """Canonical JSON of a stage's parameters (stable across runs, used in cache keys)."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def slug_ok(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None
