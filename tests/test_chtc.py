"""The CHTC job. The submit file and the sweep are read with HTCondor's own parser (the
`htcondor2` bindings): the GPU Lab, staging and self-checkpointing settings, one job per sweep
line whose arguments train.py accepts, comment and blank lines skipped. The wrapper passes flags
through, picks torchrun for several GPUs, installs only what is missing, turns its time limit or
a forwarded SIGTERM into exit 85, and keeps in resume/ (the checkpoint HTCondor spools) only what
resuming needs, putting it back in a fresh sandbox. A fake `python`/`torchrun` stands in for
training."""

import ast
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "train_h200_lab.sub"
WRAPPER = REPO / "train_h200_lab.sh"
SWEEP = REPO / "chtc_sweep.txt"
RESUME_FILES = {"checkpoints/last.pt", "checkpoints/best.pt", "logs/training_log.json"}

FAKE = """#!/usr/bin/env bash
# Stand-in for python and torchrun: records how it was called; saves like train.py when stopped.
me="$(basename "$0")"
if [[ "$me" == python && "$1" == -c ]]; then
    for module in $FAKE_MISSING; do [[ "$2" == "import $module" ]] && exit 1; done
    exit 0
fi
save_dir=""; log_dir=""; previous=""
for arg in "$@"; do
    case "$previous" in --save_dir) save_dir="$arg" ;; --log_dir) log_dir="$arg" ;; esac
    previous="$arg"
done
save() {  # FAKE_SAVES: files as "checkpoints/<name>" (in --save_dir) or "logs/<name>" (in --log_dir)
    for file in ${FAKE_SAVES:-}; do
        case "$file" in
            checkpoints/*) echo "$file" > "$save_dir/${file#*/}" ;;
            logs/*) echo "$file" > "$log_dir/${file#*/}" ;;
        esac
    done
}
case "${FAKE_MODE:-done}" in  # like train.py: the handler is in place before anything is logged
    sleep) trap 'echo "$me got TERM" >> "$FAKE_LOG"; save; exit 85' TERM ;;
    deaf) trap '' TERM ;;
esac
echo "$me $*" >> "$FAKE_LOG"
[[ "$1" == -m ]] && exit 0
if [[ -n "$save_dir" && -n "${FAKE_SEEN:-}" ]]; then
    (cd "$save_dir" && ls; cd "$OLDPWD/$log_dir" && ls) > "$FAKE_SEEN"
fi
case "${FAKE_MODE:-done}" in
    done) exit 0 ;;
    exit85) save; exit 85 ;;
esac
sleep 60 &
wait
"""


@pytest.fixture
def htcondor2(monkeypatch):
    """The bindings, run from the repository (the queue statement reads chtc_sweep.txt from there)."""
    module = pytest.importorskip("htcondor2", reason="pip install -r requirements-dev.txt (htcondor)")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("USER", "netid")  # $ENV(USER) in the staging URL
    return module


def submit_jobs(htcondor2, text: str) -> list:
    """One Submit per job of the queue statement, with that job's item variables set."""
    items = list(htcondor2.Submit(text).itemdata())
    jobs = []
    for item in items:
        assert isinstance(item, dict), f"htcondor {htcondor2.version()}: itemdata gave {item!r}"
        job = htcondor2.Submit(text)
        job.update(item)
        jobs.append(job)
    return jobs


def environment(sub) -> dict[str, str]:
    value = sub.expand("environment")
    assert value.startswith('"') and value.endswith('"'), "environment in the quoted (new) syntax"
    return dict(pair.split("=", 1) for pair in value.strip('"').split())


def sweep_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_submit_file_has_the_gpu_lab_staging_and_checkpoint_settings(htcondor2):
    sub = htcondor2.Submit(SUBMIT.read_text())
    assert sub["universe"] == "container"
    assert re.fullmatch(r"docker://pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", sub["container_image"])
    assert sub["request_gpus"] == "1"
    assert sub["MY.WantGPULab"].lower() == "true"
    assert sub["MY.GPUJobLength"] in ('"short"', '"medium"')
    capability = re.search(r"Capability\s*>=\s*([\d.]+)", sub["require_gpus"])
    memory = re.search(r"GlobalMemoryMb\s*>=\s*(\d+)", sub["require_gpus"])
    assert capability and float(capability.group(1)) >= 9.0
    assert memory and int(memory.group(1)) >= 80000
    assert re.fullmatch(r"\(\s*Target\.HasCHTCStaging\s*==\s*true\s*\)", sub["requirements"])
    # self-checkpointing as the HTCondor manual pairs it: exit 85, output transferred only at the end
    assert sub["checkpoint_exit_code"] == "85"
    assert sub["when_to_transfer_output"].upper() == "ON_EXIT"
    assert sub["MY.is_resumable"].lower() == "true"
    assert sub["should_transfer_files"].upper() == "YES"
    env = environment(sub)
    assert env["RESULTS_DIR"].startswith("results/") and "1_0_" in env["RESULTS_DIR"]  # $(Cluster)_$(Process)
    assert sub.expand("transfer_output_files") == "results"
    # the checkpoint is the wrapper's resume/ folder (last.pt, best.pt, logs), nothing else
    assert sub.expand("transfer_checkpoint_files") == env["RESUME_DIR"] == "resume"
    # what an eviction can lose: at most one checkpoint interval
    assert 1800 <= int(env["CHECKPOINT_SECONDS"]) <= 7200


def test_staged_data_has_a_versioned_name(htcondor2):
    sub = htcondor2.Submit(SUBMIT.read_text())
    inputs = [item.strip() for item in sub.expand("transfer_input_files").split(",")]
    staged = [item for item in inputs if "://" in item]
    assert staged == [f"osdf:///chtc/staging/netid/{environment(sub)['DATA_TARBALL']}"]
    assert re.search(r"_v\d+\.tar(\.gz)?$", staged[0]), "OSDF caches by name: a changed tarball needs a new one"


def local_imports(path: Path) -> set[str]:
    """This repository's modules that `path` imports, directly or through each other."""
    found, todo = set(), [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                module = REPO / f"{name.split('.')[0]}.py"
                if module.is_file() and module.name not in found:
                    found.add(module.name)
                    todo.append(module)
    return found


def test_submit_file_names_files_that_exist(htcondor2):
    sub = htcondor2.Submit(SUBMIT.read_text())
    executable = REPO / sub["executable"]
    assert executable == WRAPPER and os.access(executable, os.X_OK)
    inputs = [item.strip() for item in sub.expand("transfer_input_files").split(",")]
    local = {item for item in inputs if "://" not in item}
    for item in local:
        assert (REPO / item).is_file(), f"transfer_input_files names {item}, which does not exist"
    needed = {"train.py", "build_index.py", "requirements.txt"} | local_imports(REPO / "train.py") \
        | local_imports(REPO / "build_index.py")
    assert needed <= local, f"transfer_input_files lacks {sorted(needed - local)}"
    for key in ("log", "output", "error"):
        assert sub[key].startswith("condor_logs/")


def test_every_sweep_line_is_one_job_with_valid_train_arguments(htcondor2):
    jobs = submit_jobs(htcondor2, SUBMIT.read_text())
    assert len(jobs) == len(sweep_lines(SWEEP.read_text())) >= 2
    names, folders = set(), set()
    for job in jobs:
        name, arguments = job.expand("name"), job.expand("arguments")
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
        assert not set("'\"") & set(arguments), "arguments use the old syntax: no quoting, split on spaces"
        train.get_args_parser().parse_args(arguments.split())  # exits 2 on a bad flag
        names.add(name)
        folders.add(environment(job)["RESULTS_DIR"])
    assert len(names) == len(folders) == len(jobs), "result folders need distinct names"


def test_comment_and_blank_lines_of_the_sweep_are_not_jobs(htcondor2, tmp_path, monkeypatch):
    (tmp_path / SWEEP.name).write_text(
        "# header, --not a job\n"
        "one, --num_epochs 1\n"
        "\n"
        "   # indented, --not a job\n"
        " \t \n"
        "two, --num_epochs 2 --use_classifier\n"
        "#three, --num_epochs 3\n"
        "four, --num_epochs 4")  # no newline at the end
    monkeypatch.chdir(tmp_path)
    jobs = submit_jobs(htcondor2, SUBMIT.read_text())
    assert [(job.expand("name"), job.expand("arguments")) for job in jobs] == [
        ("one", "--num_epochs 1"), ("two", "--num_epochs 2 --use_classifier"), ("four", "--num_epochs 4")]


def test_wrapper_parses():
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)


@pytest.fixture
def sandbox(tmp_path):
    """A job sandbox with fake python/torchrun first on PATH; returns (folder, env, log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "_CONDOR_AssignedGPUs")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(log), FAKE_MISSING="", RESULTS_DIR="results/7_0_base",
               RESUME_DIR="resume", OMP_NUM_THREADS="8")
    return job, env, log


def run_wrapper(job, env, *flags, timeout=60):
    return subprocess.run(["bash", str(WRAPPER), *flags], cwd=job, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wrapper_passes_flags_through_on_one_gpu(sandbox):
    job, env, log = sandbox
    env["_CONDOR_AssignedGPUs"] = "GPU-4f1c2a"
    result = run_wrapper(job, env, "--num_epochs", "7", "--encoder_hidden_dim", "64")
    assert result.returncode == 0, result.stdout + result.stderr
    (call,) = log.read_text().splitlines()  # no pip: the fake image has every module
    words = call.split()
    assert words[:2] == ["python", str(WRAPPER.parent / "train.py")]
    args = train.get_args_parser().parse_args(words[2:])  # the wrapper's own flags are valid too
    assert args.num_epochs == 7 and args.encoder_hidden_dim == 64
    assert args.save_dir == "results/7_0_base/checkpoints" and args.log_dir == "results/7_0_base/logs"
    assert args.num_workers == 7  # request_cpus 8 minus the training process
    assert (job / "results/7_0_base/checkpoints").is_dir() and (job / "results/7_0_base/logs").is_dir()


def test_wrapper_starts_torchrun_for_several_gpus(sandbox):
    job, env, log = sandbox
    env["_CONDOR_AssignedGPUs"] = "GPU-aa,GPU-bb"
    assert run_wrapper(job, env, "--batch_size", "4").returncode == 0
    (call,) = log.read_text().splitlines()
    assert call.startswith(f"torchrun --standalone --nproc_per_node 2 {WRAPPER.parent / 'train.py'} ")
    assert call.endswith("--batch_size 4")


def test_wrapper_installs_only_missing_packages_and_builds_the_index(sandbox):
    job, env, log = sandbox
    env.update(FAKE_MISSING="cv2 pytorch_msssim", BUILD_INDEX_ROOT="embryo_dataset")
    assert run_wrapper(job, env, "--index_csv", "mine.csv").returncode == 0
    pip, build, training = log.read_text().splitlines()
    assert pip.startswith("python -m pip install --user")
    assert "pytorch-msssim" in pip and "opencv-python-headless" in pip and "pandas" not in pip
    assert build == f"python {WRAPPER.parent / 'build_index.py'} --root embryo_dataset --out index.csv"
    assert "--index_csv index.csv --index_csv mine.csv" in training  # the user's flag comes last and wins


def test_wrapper_time_limit_becomes_exit_85(sandbox):
    job, env, log = sandbox
    env.update(FAKE_MODE="sleep", CHECKPOINT_SECONDS="1")
    result = run_wrapper(job, env)
    assert result.returncode == 85, result.stdout + result.stderr
    assert "python got TERM" in log.read_text()  # train.py had the chance to write last.pt
    assert "time limit" in result.stdout and "train.py stopped" in result.stdout


def test_wrapper_kills_a_hung_run_after_the_grace_time_and_still_exits_85(sandbox):
    job, env, _ = sandbox
    env.update(FAKE_MODE="deaf", CHECKPOINT_SECONDS="1", KILL_AFTER_SECONDS="1")
    result = run_wrapper(job, env)
    assert result.returncode == 85
    assert "was killed" in result.stdout and "last checkpoint saved" in result.stdout  # not "stopped"
    assert "train.py stopped" not in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_wrapper_forwards_eviction_signals(sandbox, sig):
    job, env, log = sandbox
    env["FAKE_MODE"] = "sleep"
    proc = subprocess.Popen(["bash", str(WRAPPER)], cwd=job, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    pid_file = job / "train_h200_lab.pid"  # what the README's "checkpoint now" signals
    while not (log.exists() and "train.py" in log.read_text() and pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    assert pid_file.read_text().strip() == str(proc.pid)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 85
    assert "python got TERM" in log.read_text()


def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def test_wrapper_keeps_exit_85_from_train(sandbox):
    job, env, _ = sandbox
    env["FAKE_MODE"] = "exit85"  # train.py stopped by a signal that reached it directly
    result = run_wrapper(job, env)
    assert result.returncode == 85, result.stdout + result.stderr


def test_checkpoint_holds_only_what_resuming_needs(sandbox):
    job, env, _ = sandbox
    env.update(FAKE_MODE="sleep", CHECKPOINT_SECONDS="1",
               FAKE_SAVES=" ".join(sorted(RESUME_FILES)) + " checkpoints/checkpoint_epoch_5.pt logs/recon_epoch_5.png")
    result = run_wrapper(job, env)
    assert result.returncode == 85, result.stdout + result.stderr
    results = job / "results/7_0_base"
    assert files_under(job / "resume") == RESUME_FILES | {"logs/recon_epoch_5.png"}  # no checkpoint_epoch_<N>.pt
    for name in files_under(job / "resume"):
        assert (job / "resume" / name).samefile(results / name)  # hard links: no copies
    assert "checkpoint_epoch_5.pt" in os.listdir(results / "checkpoints")  # kept for the final output


def test_checkpoint_before_the_first_last_pt_still_has_its_folder(sandbox):
    job, env, _ = sandbox
    env.update(FAKE_MODE="sleep", CHECKPOINT_SECONDS="1")  # stopped before anything was saved
    assert run_wrapper(job, env).returncode == 85
    assert (job / "resume").is_dir() and files_under(job / "resume") == set()


def test_fresh_sandbox_continues_from_the_spooled_checkpoint(sandbox, tmp_path):
    job, env, _ = sandbox
    env.update(FAKE_MODE="sleep", CHECKPOINT_SECONDS="1", FAKE_SAVES=" ".join(sorted(RESUME_FILES)))
    assert run_wrapper(job, env).returncode == 85
    fresh = tmp_path / "fresh"  # another machine: only the checkpoint files come back
    fresh.mkdir()
    shutil.copytree(job / "resume", fresh / "resume")
    seen = tmp_path / "seen.txt"
    env.update(FAKE_MODE="done", FAKE_SAVES="", FAKE_SEEN=str(seen))
    result = run_wrapper(fresh, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restoring" in result.stdout
    assert seen.read_text().split() == ["best.pt", "last.pt", "training_log.json"]  # there when train.py started
    assert files_under(fresh / "results/7_0_base") == RESUME_FILES
