"""One key of a recipe file set in place, the user's comments and layout kept (`bakery models use`).

tomlkit would do this, but it is not among the project's dependencies; the edit is small enough to hand-write
safely: only a `key = value` line of a plain `[section]` table is replaced (its trailing comment kept) or added,
and the edited text is parsed again and must differ from the old one in that key alone, else nothing is written.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from bakery.recipe.base import RecipeError

HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")


def set_key(recipe_file: Path, key: str, value: str) -> None:
    """Write `section.name = "value"` into `recipe_file`; RecipeError (one line) when it cannot be done safely."""
    section, _, name = key.rpartition(".")
    text = recipe_file.read_text(encoding="utf-8")
    before = tomllib.loads(text)
    lines = text.splitlines(keepends=True)
    new = _edited(lines, section, name, json.dumps(value))
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        after = None
    expected = {**before, section: {**before.get(section, {}), name: value}}
    if after != expected:
        raise RecipeError(recipe_file, [f"{key}: cannot set it safely here (written as a dotted key or inline "
                                        "table?): set it by hand"])
    tmp = recipe_file.with_name(recipe_file.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, recipe_file)


def _edited(lines: list[str], section: str, name: str, literal: str) -> str:
    start = next((i for i, line in enumerate(lines) if (m := HEADER.match(line)) and m.group(1) == section), None)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if start is None:
        tail = "" if not lines or lines[-1].endswith("\n") else newline
        return "".join(lines) + f"{tail}{newline}[{section}]{newline}{name} = {literal}{newline}"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    key = re.compile(rf"^(\s*){re.escape(name)}\s*=")
    for i in range(start + 1, end):
        if m := key.match(lines[i]):
            lines[i] = f"{m.group(1)}{name} = {literal}{_comment(lines[i], name)}{newline}"
            return "".join(lines)
    lines.insert(start + 1, f"{name} = {literal}{newline}")
    return "".join(lines)


def _comment(line: str, name: str) -> str:
    """The trailing `  # ...` of a one-line `name = value` (the shortest value TOML accepts ends where it starts)."""
    body = line.rstrip("\r\n")
    head, _, rest = body.partition("=")
    for cut in range(1, len(rest) + 1):
        try:
            tomllib.loads(f"{name} = {rest[:cut]}")
        except tomllib.TOMLDecodeError:
            continue
        tail = rest[cut:]
        if tail.strip().startswith("#"):
            return tail
        if not tail.strip():
            return ""
    return ""
