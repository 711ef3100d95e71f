"""SLURM scripts as rendered text: valid bash, the cluster conventions (signal, requeue, trap, srun, rendezvous),
CPU-only and GPU layouts, the eval array and its merge job, and errors that name the flag or key. No cluster needed:
tests/slurm/test_jobs.py submits the same scripts to a real one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xdt.errors import ConfigError, XdtError
from xdt.slurm.eval_job import EvalSpec, build_eval_jobs
from xdt.slurm.render import PLACEHOLDER, Resources, render, time_seconds
from xdt.slurm.train_job import RESUME_KEY, build_train_job, resume_supported

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SLURM_DIR = ROOT / "slurm"


def bash_n(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sbatch"
    script.write_text(text)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def directives(text: str) -> list[str]:
    """The #SBATCH lines sbatch reads: those before the first command."""
    out = []
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            out.append(line[len("#SBATCH "):])
        elif line.strip() and not line.startswith("#"):
            break
    return out


def train(tmp_path: Path, *overrides: str, command: str = "run", **res) -> str:
    job = build_train_job(QUICKSTART, [f"output.dir={tmp_path / 'run'}", *overrides], Resources(**res), command)
    assert not PLACEHOLDER.search(job.text)
    return job.text


def test_templates_are_valid_bash_before_rendering():
    for template in ("train.sbatch", "eval-array.sbatch", "eval-merge.sbatch"):
        done = subprocess.run(["bash", "-n", str(SLURM_DIR / template)], capture_output=True, text=True)
        assert done.returncode == 0, f"{template}: {done.stderr}"
    done = subprocess.run(["bash", "-n", str(SLURM_DIR / "local" / "cluster.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_multi_node_gpu_training_script_carries_the_conventions(tmp_path):
    text = train(tmp_path, nodes=4, gpus_per_node=8, cpus_per_task=32, time="2-00:00:00", signal_seconds=600,
                 partition="gpu", account="proj1", sbatch_options=["--qos=high"])
    bash_n(text, tmp_path)
    d = directives(text)
    for expected in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=32",
                     "--time=2-00:00:00", "--partition=gpu", "--account=proj1", "--qos=high",
                     "--signal=B:USR1@600", "--requeue", "--open-mode=append", f"--chdir={Path.cwd()}",
                     f"--output={tmp_path / 'run' / 'slurm' / 'logs'}/%x-%j.out"):
        assert expected in d, f"#SBATCH {expected} missing from {d}"
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"' in text
    assert "srun --kill-on-bad-exit=1" in text and '--output="$LOG_DIR/%x-%j.%t.log"' in text
    for flag in ('--nnodes "$SLURM_NNODES"', "--nproc_per_node 8", "--rdzv_backend c10d",
                 '--rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"', '--rdzv_id "$SLURM_JOB_ID"'):
        assert flag in text
    assert "trap 'forward USR1' USR1" in text and "trap 'forward TERM' TERM" in text
    assert 'kill -s "$1" "$SRUN_PID"' in text
    assert "export OMP_NUM_THREADS=4" in text  # 32 CPUs over 8 ranks
    assert "DS_ACCELERATOR" not in text
    assert f"-m xdt run {QUICKSTART}" in text.replace(" \\\n        ", " ")
    # unconditional: a renamed resume key must fail here, not quietly drop the check
    assert resume_supported() and f"{RESUME_KEY}=auto" in text


def test_cpu_only_cluster_runs_cpus_per_task_gloo_ranks(tmp_path):
    text = train(tmp_path, nodes=2, gpus_per_node=0, cpus_per_task=16)
    bash_n(text, tmp_path)
    assert "#SBATCH --gpus-per-node" not in text
    assert "--nproc_per_node 16" in text and "export OMP_NUM_THREADS=1" in text
    assert "export DS_ACCELERATOR=cpu" in text and "gloo on CPU" in text
    assert "#SBATCH --time" not in text  # the partition's default unless asked
    text = train(tmp_path, gpus_per_node=0, cpus_per_task=16, procs_per_node=4)
    assert "--nproc_per_node 4" in text and "export OMP_NUM_THREADS=4" in text


def test_srun_tasks_without_torchrun(tmp_path):
    text = train(tmp_path, nodes=2, ntasks_per_node=4, cpus_per_task=2)
    bash_n(text, tmp_path)
    assert "#SBATCH --ntasks-per-node=4" in text and "--ntasks-per-node=4 --open-mode=append" in text
    assert "torch.distributed.run" not in text and '"$PYTHON" -m xdt run' in text
    assert "export OMP_NUM_THREADS=2" in text


@pytest.mark.parametrize("command, words", [("teacher", "-m xdt teacher train"), ("cache", "-m xdt teacher cache"),
                                            ("run", "-m xdt run")])
def test_each_command(tmp_path, command, words):
    cache = [f"distill.teacher_cache={tmp_path / 'cache'}"] if command == "cache" else []  # where it writes
    text = train(tmp_path, *cache, command=command)
    bash_n(text, tmp_path)
    assert words in text
    assert f"#SBATCH --job-name=xdt-{command}-run" in text


def test_distill_needs_a_teacher(tmp_path):
    with pytest.raises(ConfigError, match="^teacher.model"):
        train(tmp_path, command="distill")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    text = train(tmp_path, f"teacher.model={teacher}", command="distill")
    assert f"-m xdt distill {QUICKSTART}" in text.replace(" \\\n        ", " ")


def test_overrides_are_quoted_for_bash(tmp_path):
    text = train(tmp_path, "data.langs=[en, de]")
    bash_n(text, tmp_path)
    assert "'data.langs=[en, de]'" in text


def test_script_is_written_next_to_the_output_and_dry_run_prints_it(tmp_path, capsys):
    from xdt.cli import main

    out = tmp_path / "run"
    assert main(["slurm", "submit", QUICKSTART, f"output.dir={out}", "--dry-run", "--job-name", "mine",
                 "--cpus-per-task", "2"]) == 0
    printed = capsys.readouterr().out
    script = out / "slurm" / "mine.sbatch"
    assert script.read_text() == printed and "#SBATCH --job-name=mine" in printed
    assert (out / "slurm" / "logs").is_dir()


@pytest.mark.parametrize("res, message", [
    ({"nodes": 0}, "^--nodes: expected a positive integer"),
    ({"gpus_per_node": -1}, "^--gpus-per-node"),
    ({"time": "soon"}, "^--time 'soon'"),
    ({"time": "00:05:00", "signal_seconds": 300}, r"^--signal-seconds 300: not shorter than --time 00:05:00"),
    ({"signal_seconds": 70000}, "^--signal-seconds: SLURM accepts at most 65535"),
    ({"partition": "a b"}, "^--partition"),
    ({"env": ["1X=2"]}, "^--env '1X=2'"),
    ({"sbatch_options": ["qos=high"]}, "^--sbatch-option"),
    ({"ntasks_per_node": 2, "procs_per_node": 2}, "^--procs-per-node"),
])
def test_bad_resources_name_the_flag(tmp_path, res, message):
    with pytest.raises(XdtError, match=message):
        train(tmp_path, **res)


def test_bad_config_and_paths_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^output.dirr: unknown key"):
        build_train_job(QUICKSTART, ["output.dirr=x"], Resources())
    with pytest.raises(XdtError, match="^output.dir: .* contains ' '"):
        build_train_job(QUICKSTART, [f"output.dir={tmp_path / 'a b'}"], Resources())
    with pytest.raises(XdtError, match="^--command 'train'"):
        build_train_job(QUICKSTART, [], Resources(), "train")


def test_cli_errors_exit_2(tmp_path, capsys):
    from xdt.cli import main

    assert main(["slurm", "submit", QUICKSTART, f"output.dir={tmp_path}", "--nodes", "0", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("xdt: error: --nodes:")
    assert main(["slurm", "status", "abc"]) == 2
    assert "JOBID 'abc'" in capsys.readouterr().err


def test_time_formats():
    assert time_seconds("90") == 5400
    assert time_seconds("10:30") == 630
    assert time_seconds("01:00:00") == 3600
    assert time_seconds("2-00") == 172800
    assert time_seconds("1-02:03") == 93780
    assert time_seconds("1-00:00:05") == 86405
    assert time_seconds("UNLIMITED") is None


def test_render_drops_empty_optional_lines_and_needs_every_value():
    text = render("eval-merge.sbatch", {"shards": 2, "script": "/o/m.sbatch", "description": "d", "out": "/o",
                                        "job_name": "j", "optional_directives": "", "log_dir": "/o/l",
                                        "workdir": "/w", "python": "py", "env_lines": "", "setup_lines": "",
                                        "shard_dirs": "/o/shards/0 /o/shards/1"})
    assert "\n\n\n" not in text and "#SBATCH --job-name=j\n#SBATCH --nodes=1" in text
    with pytest.raises(XdtError, match="no value for placeholder"):
        render("eval-merge.sbatch", {})


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "wikiann" / "xtreme").is_dir(),
                    reason="../shared/data/wikiann/xtreme not found")
def test_eval_array_and_merge_scripts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    data = str(ROOT.parent / "shared" / "data" / "wikiann" / "xtreme")
    spec = EvalSpec(model=str(model), data=[data], out=str(tmp_path / "ev"), shards=4, langs="af,hi,ms,tl,et",
                    max_sentences=50)
    jobs = build_eval_jobs(spec, Resources(cpus_per_task=2, time="00:20:00"))
    bash_n(jobs.array_text, tmp_path)
    d = directives(jobs.array_text)
    assert "--array=0-3" in d and "--cpus-per-task=2" in d and "--time=00:20:00" in d
    assert '--shard "$SHARD/4"' in jobs.array_text and 'SHARD="$SLURM_ARRAY_TASK_ID"' in jobs.array_text
    assert f"--out \"{tmp_path / 'ev'}/shards/$SHARD\"" in jobs.array_text
    merge = jobs.merge_text
    bash_n(merge, tmp_path)
    assert "--job-name=xdt-eval-ev-merge" in directives(merge)
    # the dependency goes on sbatch's command line, where the array's id is known (no #SBATCH line can read it)
    assert not any(d.startswith("--dependency") for d in directives(merge))
    assert jobs.merge_options("1234") == ["--dependency=afterok:1234", "--kill-on-invalid-dep=yes"]
    assert f"eval merge {tmp_path / 'ev'}/shards/0" in merge and f"--out \"{tmp_path / 'ev'}/report\"" in merge
    with pytest.raises(XdtError, match="^--shards 6: more shards than the 5 language"):
        build_eval_jobs(EvalSpec(model=str(model), data=[data], out=str(tmp_path / "ev"), shards=6,
                                 langs="af,hi,ms,tl,et"), Resources())
    with pytest.raises(XdtError, match="^--model .*: not found"):
        build_eval_jobs(EvalSpec(model=str(tmp_path / "none"), data=[data], out=str(tmp_path / "ev"), shards=2),
                        Resources())
    with pytest.raises(XdtError, match="^--nodes/--ntasks-per-node"):
        build_eval_jobs(spec, Resources(nodes=2))


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "wikiann" / "xtreme").is_dir(),
                    reason="../shared/data/wikiann/xtreme not found")
def test_eval_dry_run_writes_scripts_sbatch_accepts_as_printed(tmp_path, capsys):
    from xdt.cli import main

    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "ev"
    assert main(["slurm", "eval", "--model", str(model), "--data", str(ROOT.parent / "shared" / "data" / "wikiann" /
                 "xtreme"), "--langs", "af,hi", "--shards", "2", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr()
    merge = (out / "slurm" / "xdt-eval-ev-merge.sbatch").read_text()
    assert merge in printed.out
    # no #SBATCH line holds a shell variable: sbatch reads them literally (`afterok:$ARRAY_JOB_ID` is refused)
    assert not [d for d in directives(merge) if "$" in d]
    assert (f"ARRAY_JOB_ID=$(sbatch --parsable {out}/slurm/xdt-eval-ev-array.sbatch) && sbatch "
            f"--dependency=afterok:$ARRAY_JOB_ID --kill-on-invalid-dep=yes {out}/slurm/xdt-eval-ev-merge.sbatch"
            ) in printed.err


def test_cluster_script_usage():
    done = subprocess.run(["bash", str(SLURM_DIR / "local" / "cluster.sh"), "nonsense"], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
    done = subprocess.run(["bash", str(SLURM_DIR / "local" / "cluster.sh"), "env"], capture_output=True, text=True,
                          env={"XDT_SLURM_DIR": "/tmp/somewhere", "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "export SLURM_CONF=/tmp/somewhere/slurm.conf"


def test_every_slurm_option_is_declared_once_and_reaches_flags_config_and_script(tmp_path, capsys):
    # each field of SlurmResources is a flag of `xdt slurm submit`; the `step` ones are also keys of slurm.<step>
    import dataclasses

    from xdt.cli import main, parse_args
    from xdt.config import SlurmResources, SlurmStepConfig, load_config, slurm_flag
    from xdt.slurm.cli import _resources

    fields = dataclasses.fields(SlurmResources)
    steps = [f.name for f in fields if f.metadata["step"]]
    assert [f.name for f in dataclasses.fields(SlurmStepConfig)] == steps
    assert {"nodes", "time", "partition"} <= set(steps) and "job_name" not in steps
    with pytest.raises(SystemExit):
        main(["slurm", "submit", "--help"])
    shown = capsys.readouterr().out
    assert all(slurm_flag(f) in shown for f in fields)
    args = parse_args(["slurm", "submit", QUICKSTART, "--nodes", "3", "--time", "01:00:00", "--env", "A=1",
                       "--sbatch-option=--qos=high"])
    res = _resources(args)
    assert (res.nodes, res.time, res.env, res.sbatch_options, res.signal_seconds) == \
        (3, "01:00:00", ["A=1"], ["--qos=high"], 300)
    cfg = load_config(QUICKSTART, ["slurm.distill.time=02:00:00", "slurm.teacher.gpus_per_node=2"])
    assert (cfg.slurm.distill.time, cfg.slurm.teacher.gpus_per_node, cfg.slurm.eval.nodes) == ("02:00:00", 2, None)
    with pytest.raises(ConfigError, match=r"^slurm.cache.nodes: expected a positive integer"):
        load_config(QUICKSTART, ["slurm.cache.nodes=0"])
    # a new option is one more field: its #SBATCH line and its check come with it
    from xdt.config import _slurm

    with_qos = dataclasses.make_dataclass("WithQos", [("qos", "str | None", _slurm(None, "QOS", sbatch=True))],
                                          bases=(Resources,))
    lines = with_qos(qos="high", time="01:00:00").common_values("python")["optional_directives"].splitlines()
    assert lines == ["#SBATCH --time=01:00:00", "#SBATCH --qos=high"]
    with pytest.raises(XdtError, match=r"^--qos: 'a b' is empty or contains spaces"):
        with_qos(qos="a b").check()
