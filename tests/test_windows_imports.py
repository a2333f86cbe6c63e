"""Windows has no POSIX-only modules: every module of bakery/, storage/, tasks/ and flows/ imports, and the CLI
answers, with `fcntl`, `termios`, `pwd`, `grp` and `resource` unimportable (as on Windows). A third-party library
that picks its platform branch by `sys.platform` is not fooled by this; ours must not need those modules at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = ("fcntl", "termios", "tty", "pty", "pwd", "grp", "resource")
BLOCK = f"import sys\nfor name in {POSIX_ONLY!r}:\n    sys.modules[name] = None  # what `import` meets on Windows\n"
IMPORT_ALL = BLOCK + """
import importlib, pkgutil
from pathlib import Path
failed = []
for package in ("bakery", "storage", "tasks", "flows"):
    names = [package] + [m.name for m in pkgutil.walk_packages([str(Path(package))], package + ".")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failed.append(f"{name}: {exc}")
print("\\n".join(failed) or "all imported")
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_every_module_imports_without_posix_only_modules():
    done = _run(IMPORT_ALL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("all imported"), done.stdout


def test_a_lock_is_taken_without_fcntl(tmp_path: Path):
    code = BLOCK + "from storage.locks import exclusive\nwith exclusive(sys.argv[1]):\n    print('held')\n"
    done = _run(code, str(tmp_path / "state"))
    assert done.returncode == 0 and done.stdout.strip() == "held", done.stderr[-3000:]


def test_the_cli_answers_without_posix_only_modules(tmp_path: Path):
    done = _run(BLOCK + "sys.argv = ['bakery', '--help']\nfrom bakery.cli import app\napp()\n")
    assert "Usage" in done.stdout, done.stderr[-3000:]
    cli = BLOCK + "sys.argv = ['bakery', *sys.argv[1:]]\nfrom bakery.cli import app\napp()\n"
    assert _run(cli, "init", str(tmp_path / "proj")).returncode == 0
    listed = _run(cli, "models", "list", str(tmp_path / "proj" / "recipe.toml"))
    assert "autotag.model" in listed.stdout and "not set" in listed.stdout, listed.stderr[-3000:]
