"""Long per-picture work that survives a kill: make each result, keep them in batches as they come."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def make_and_keep(items: Iterable[T], make: Callable[[T], R], keep: Callable[[list[tuple[T, R]]], None],
                  batch: int, advance: Callable[[], None] = lambda: None,
                  skip: type[Exception] | tuple[type[Exception], ...] = ()) -> tuple[dict[T, R], dict[T, str]]:
    """`make` each item and hand (item, result) pairs to `keep` every `batch` results and once more at the end,
    also when interrupted: a killed run keeps what it made. An item whose `make` raises one of `skip` is
    returned with why instead. Returns (results, failures)."""
    made: dict[T, R] = {}
    failed: dict[T, str] = {}
    pending: list[tuple[T, R]] = []
    try:
        for item in items:
            try:
                made[item] = result = make(item)
            except skip as exc:
                failed[item] = str(exc)
            else:
                pending.append((item, result))
                if len(pending) >= batch:
                    keep(pending)
                    pending = []
            advance()
    finally:
        if pending:
            keep(pending)
    return made, failed
