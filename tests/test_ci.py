"""What a fresh machine and CI need: the C++ toolchain DeepSpeed compiles its CPU op with (scripts/toolchain.sh, run
by scripts/setup.sh), `.ci/run` refusing to go green without the real data, and a per-test timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests has xdt, deepspeed and pip's ninja


def _tool_dir(tmp_path: Path, tools: list[str]) -> Path:
    """A PATH folder holding only `tools` (links to this machine's): no compiler, no apt-get."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool))
    return folder


def test_toolchain_check_passes_here_and_names_a_missing_compiler_in_one_line(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "toolchain.sh"), str(VENV), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path = _tool_dir(tmp_path, ["bash", "cut", "paste", "sed", "grep", "tail", "dirname"])
    env = dict(os.environ, PATH=str(path), CXX=str(tmp_path / "no-such-c++"))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "toolchain.sh"), str(VENV)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "DeepSpeed cannot compile its C++ op" in done.stderr and "no-such-c++" in done.stderr
    assert "apt-get install g++" in done.stderr


def test_setup_runs_the_toolchain_step():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'bash scripts/toolchain.sh "$venv"' in setup
    assert "scripts/toolchain.sh" in (ROOT / "Makefile").read_text()  # a change to it re-runs the set-up


def test_ci_fails_without_the_shared_data_before_installing_anything(tmp_path):
    """A checkout without ../shared beside it: the data tests would all skip and CI would look green."""
    checkout = tmp_path / "xdt"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", checkout / ".ci" / "run")
    (checkout / ".venv").mkdir()
    (checkout / ".venv" / ".installed").touch()
    done = subprocess.run(["bash", str(checkout / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "../shared/data not found" in done.stderr
    assert (checkout / ".venv" / ".installed").exists()  # it stopped before its first step


def test_a_hung_test_fails_on_the_configured_timeout(tmp_path, request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout (the test extra) is not installed"
    assert int(request.config.getini("timeout")) >= 900  # the slowest test takes ~265 s on a loaded machine
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(600)\n")
    # this project's pytest configuration, with the limit lowered to 2 s for the check
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=2",
                           str(tmp_path / "test_hang.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Timeout" in done.stdout, done.stdout[-2000:]

