"""Every command the README and docs/ show still parses: xdt's own command line (and, for the training commands,
their config with its overrides), the benchmark scripts' flags and the Makefile targets. A renamed flag or config
key fails here, not in a reader's terminal. Nothing runs: parsing only (configs without the file checks)."""

from __future__ import annotations

import importlib.util
import itertools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# not xdt's: installing, downloading (shown for the user's machine)
FOREIGN = ("hf ", "pip ", "PIP_CONSTRAINT=", "bash ", "torchrun ", "srun ", "sbatch ", "deepspeed ")
RUN_CONFIGS = {("run",), ("distill",), ("teacher", "train"), ("teacher", "cache"), ("slurm", "submit"),
               ("slurm", "pipeline")}


def shown_commands() -> list[tuple[str, str]]:
    """(file, command) for every line of a ```bash block: continuations joined, comments dropped."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if line and not line.startswith("#"):
                    found.append((doc.name, line))
    return found


def named_commands() -> list[tuple[str, str]]:
    """(file, span) for every inline `xdt ...` of the prose that is not a synopsis (no [optional] parts,
    alternatives or ellipses): often a command and some of its flags, without the values it needs."""
    found = []
    for doc in DOCS:
        prose = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`(xdt [^`]+)`", prose):
            if not re.search(r"[\[\]|<>]|\.\.\.|…", span):
                found.append((doc.name, span))
    return found


COMMANDS = shown_commands()
NAMED = named_commands()


def test_the_docs_show_commands():
    assert {"README.md", "slurm.md", "benchmarks.md"} <= {f for f, _ in COMMANDS}
    assert {"cli.md", "configs.md", "deployment.md"} <= {f for f, _ in NAMED}
    assert len(COMMANDS) > 20 and len(NAMED) > 50, (len(COMMANDS), len(NAMED))


def _script_parser(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return getattr(module, "parse_args", None)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_a_shown_command_parses(doc, command):
    from xdt.cli import parse_args
    from xdt.config import load_config

    if command.startswith(FOREIGN):
        return
    argv = shlex.split(command)
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert set(argv[1:]) <= set(targets), f"{doc}: {command}: no such Makefile target"
        return
    if argv[0] == "xdt":
        try:
            args = parse_args(argv[1:])
        except SystemExit as stop:
            pytest.fail(f"{doc}: `{command}` no longer parses (exit {stop.code})")
        words = tuple(a for a in argv[1:3] if not a.startswith("-"))
        if any(words[:len(k)] == k for k in RUN_CONFIGS) and getattr(args, "config", None):
            config = ROOT / args.config
            if config.is_file():  # a placeholder (CONFIG) is the user's file
                load_config(config, list(args.overrides), check=False)  # a renamed key: one ConfigError
        return
    script = next((a for a in argv if a.startswith("benchmarks/") and a.endswith(".py")), None)
    assert script, f"{doc}: `{command}`: not a command this test knows how to check; add it to FOREIGN or here"
    rest = argv[argv.index(script) + 1:]
    parse = _script_parser(ROOT / script)
    if parse is not None:
        try:
            parse(rest)
        except SystemExit as stop:
            pytest.fail(f"{doc}: `{command}` no longer parses (exit {stop.code})")
    else:  # a script without a parse_args of its own: its --help, with the flags shown checked by name
        out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        for flag in (a.split("=")[0] for a in rest if a.startswith("--")):
            assert flag in out.stdout, f"{doc}: `{command}`: {script} has no {flag}"


@pytest.mark.parametrize("doc,span", NAMED, ids=[f"{f}:{c[:60]}" for f, c in NAMED])
def test_a_named_command_and_its_flags_exist(doc, span, capsys):
    """`xdt COMMAND ... --help` exits 0, and its help lists every flag the span names."""
    from xdt.cli import parse_args

    argv = [a for a in shlex.split(span)[1:] if a != "--help"]
    words = list(itertools.takewhile(lambda a: not a.startswith("-") and "=" not in a, argv))[:2]
    with pytest.raises(SystemExit) as stop:
        parse_args([*words, "--help"])
    assert stop.value.code == 0, f"{doc}: `{span}`: no such command"
    shown = capsys.readouterr().out
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", shown), f"{doc}: `{span}`: xdt {' '.join(words)} has no {flag}"
