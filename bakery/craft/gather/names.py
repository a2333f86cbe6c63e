"""One name per picture: what users see and what exports write, unique and stable.

A picture's identity is its content (the sha256 of its file); its name is a label
derived from where it came from (`chara/pic0`). Two different pictures can want the
same label: `pic0.png` beside `pic0.jpg`, `img001.png` in two source folders, the
frames of `anim.gif` beside `anim0001.png`. Where labels collide, each colliding
picture gets a suffix that depends only on itself (its file extension, else its
content hash), so the same files always get the same names, whatever order they
are found in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

HASH_SUFFIX = 8  # hex digits of the content hash that tell colliding pictures apart


@dataclass(frozen=True)
class Wanted:
    name: str  # the label the picture would like ("chara/pic0")
    key: str  # its identity: the content hash
    extension: str = ""  # its file's extension without the dot ("jpg"), a readable first suffix


def _fold(name: str) -> str:
    # Case-insensitive file systems (Windows, macOS) would merge "Pic0.png" and "pic0.png" in an export.
    return name.casefold()


def unique_names(wanted: Sequence[Wanted]) -> dict[str, str]:
    """key -> a name no other key has (compared case-insensitively).

    A label wanted by one key stays as it is. Colliding keys get `_<extension>` when that
    tells them apart, else `_<hash prefix>`. Several entries with the same key are one
    picture: they keep the first label (in sorted order) as its name.
    """
    labels: dict[str, str] = {}
    for w in sorted(wanted, key=lambda w: (w.key, w.name, w.extension)):
        labels.setdefault(w.key, w.name)
    extension = {w.key: w.extension for w in wanted if labels[w.key] == w.name}
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, label in labels.items():
        by_label[_fold(label)].append(key)
    taken = {label for label, keys in by_label.items() if len(keys) == 1}
    out = {keys[0]: labels[keys[0]] for keys in by_label.values() if len(keys) == 1}
    for keys in (k for k in by_label.values() if len(k) > 1):
        exts = [_fold(extension[k]) for k in keys]
        readable = all(exts) and len(set(exts)) == len(exts)
        for key, ext in zip(sorted(keys), exts):
            name = f"{labels[key]}_{ext}" if readable and _fold(f"{labels[key]}_{ext}") not in taken else ""
            if not name:
                name = f"{labels[key]}_{key[:HASH_SUFFIX]}"
            taken.add(_fold(name))
            out[key] = name
    return out


def collisions(names: Sequence[str]) -> list[str]:
    """Names that occur more than once (case-insensitively): two pictures under one name."""
    seen: dict[str, int] = defaultdict(int)
    for n in names:
        seen[_fold(n)] += 1
    return sorted({n for n in names if seen[_fold(n)] > 1})
