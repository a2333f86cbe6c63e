"""The run's log file, `WORKDIR/logs/run-<run_id>.log`: in full what the terminal shows short.

It holds every log line of the run (tracebacks included), the full text of
each error that was shortened and the whole of each list that was cut (the
skipped files among them). The terminal and the catalog get one line that
names this file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakery.report import SHORT, name_list, short_error

if TYPE_CHECKING:
    from tasks.runinfo import RunInfo

LOGS_DIR = "logs"
REPLAY_LOGGER = "bakery.replay"  # a run replayed from the stage cache, without Prefect (tasks/stage.py)
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", REPLAY_LOGGER)  # get_run_logger(), Prefect's engine
_latest: list[Path] = []  # the run log this process opened last: the console's short lines point to it


def run_log_path(workdir: str | Path, run_id: str) -> Path:
    return Path(workdir) / LOGS_DIR / f"run-{run_id}.log"


def write_full(run: RunInfo, title: str, lines: str | Iterable[str]) -> Path:
    """Append a titled block to the run's log file; returns its path."""
    path = run_log_path(run.workdir, run.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = lines if isinstance(lines, str) else "\n".join(lines)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} {title}\n{body}\n")
    return path


def brief(run: RunInfo, text: str, limit: int = SHORT) -> str:
    """`text` as one line of at most `limit` characters; when it had to be cut, its full text goes to the
    run's log, which the line names."""
    line = short_error(text, limit)
    if not line.endswith("…"):
        return line
    tail = f" (full text in {write_full(run, 'full text', text)})"
    return short_error(text, max(limit - len(tail), limit // 2)) + tail


def listed(run: RunInfo, names: Sequence[str], shown: int = 5, noun: str = "", stable: bool = False) -> str:
    """name_list(names, shown, noun); when names were left out, the whole list goes to the run's log, which it names.

    `stable`: the text is part of a cache key (a TrainSet's warnings), so it does not name the per-run file.
    """
    text = name_list(names, shown, noun)
    if len(names) <= shown:
        return text
    path = write_full(run, f"{len(names)} {noun or 'name'}s", names)
    return f"{text} (all in {'the run log' if stable else path})"


def write_skips(run: RunInfo, skips: Sequence[dict[str, Any]]) -> None:
    """Every skipped file of the run with its reason: `bakery status` shows only the first ones."""
    if skips:
        write_full(run, f"skipped ({len(skips)})", (f"{s['stage']}: {s['subject']}: {s['reason']}" for s in skips))


class _OneLine(logging.Formatter):
    """Wraps a console formatter: an error, or any record over `long` characters, prints as one short line."""

    def __init__(self, inner: logging.Formatter, limit: int, long: int = 1000):
        super().__init__()
        self.inner, self.limit, self.long = inner, limit, long

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.ERROR and not record.exc_info and len(record.getMessage()) <= self.long:
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None  # the traceback goes to the log only
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        line = short_error(text, self.limit)
        if (line.endswith("…") or saved[0]) and _latest:
            line += f" (full text in {_latest[-1]})"
        return line


@contextmanager
def run_log(run: RunInfo) -> Iterator[Path]:
    """Every log line of the run, in full, also goes to its log file for the duration of the block."""
    from prefect.logging.formatters import PrefectFormatter

    path = run_log_path(run.workdir, run.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(PrefectFormatter(
        "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
        flow_run_fmt="%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
        task_run_fmt="%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
    ))
    loggers = [logging.getLogger(name) for name in RUN_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    _latest[:] = [path]
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


@contextmanager
def short_console(limit: int = SHORT) -> Iterator[None]:
    """Errors print as one line on the terminal (Prefect's console handler) for the duration of the block;
    their tracebacks and full text are in the run's log file."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [h.formatter for h in handlers]
    for h in handlers:
        h.setFormatter(_OneLine(h.formatter or logging.Formatter(), limit))
    try:
        yield
    finally:
        for h, fmt in zip(handlers, saved):
            h.setFormatter(fmt)
