"""A bake folder's lock: a second process waits for the first (and is told who holds it); a SIGKILLed holder
leaves no stale lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from storage.locks import exclusive

ROOT = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from pathlib import Path
from storage.locks import exclusive
folder, marker, hold_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
with exclusive(folder):
    marker.write_text("holding")
    time.sleep(hold_s)
    marker.write_text("released")
"""


def _holder(tmp_path: Path, hold_s: float) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "state"), str(marker), str(hold_s)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text() == "holding"):
        assert proc.poll() is None and time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    return proc, marker


def test_a_second_process_waits_for_the_holder_and_is_told_who_it_is(tmp_path: Path):
    proc, marker = _holder(tmp_path, hold_s=1.5)
    told = []
    with exclusive(tmp_path / "state", told.append):
        assert marker.read_text() == "released"  # not before the holder let go
    assert told == [f"pid {proc.pid} on {socket.gethostname()}"]
    assert proc.wait(timeout=30) == 0
    told.clear()
    with exclusive(tmp_path / "state", told.append):  # free now: no wait, nobody told
        pass
    assert told == []


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path):
    proc, marker = _holder(tmp_path, hold_s=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    started = time.monotonic()
    with exclusive(tmp_path / "state"):
        assert marker.read_text() == "holding"  # it never got to release it
    assert time.monotonic() - started < 5
