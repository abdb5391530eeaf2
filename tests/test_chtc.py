"""The CHTC job: the submit file is well-formed and names files that exist; the wrapper passes
flags through, picks torchrun for several GPUs, installs only what is missing, and turns its
time limit or a forwarded SIGTERM into exit 85. A fake `python`/`torchrun` stands in for training."""

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "train_h200_lab.sub"
WRAPPER = REPO / "train_h200_lab.sh"
BUILTIN_MACROS = {"Cluster", "ClusterId", "Process", "ProcId", "Step", "Item", "Row"}

FAKE = """#!/usr/bin/env bash
# Stand-in for python and torchrun: records how it was called.
me="$(basename "$0")"
if [[ "$me" == python && "$1" == -c ]]; then
    for module in $FAKE_MISSING; do [[ "$2" == "import $module" ]] && exit 1; done
    exit 0
fi
case "${FAKE_MODE:-done}" in  # like train.py: the handler is in place before anything is logged
    sleep) trap 'echo "$me got TERM" >> "$FAKE_LOG"; exit 85' TERM ;;
    deaf) trap '' TERM ;;
esac
echo "$me $*" >> "$FAKE_LOG"
[[ "$1" == -m || "${FAKE_MODE:-done}" == done ]] && exit 0
sleep 60 &
wait
"""


def parse_submit(path: Path) -> tuple[dict[str, str], str]:
    """`key = value` lines (keys lower-cased; `+Attr` kept with its +) with $(macro) expanded,
    plus the queue statement."""
    raw, queue = {}, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("queue"):
            assert queue is None, "one queue statement"
            queue = line
            continue
        assert "=" in line, f"{path.name}:{number}: not a key = value line: {line}"
        key, value = (part.strip() for part in line.split("=", 1))
        assert re.fullmatch(r"\+?[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{number}: bad key {key!r}"
        assert key.lower() not in raw, f"{path.name}:{number}: {key} set twice"
        raw[key.lower()] = value

    def expand(value: str, depth: int = 0) -> str:
        assert depth < 10, "macro loop"

        def one(match):
            name = match.group(1)
            if name in BUILTIN_MACROS:
                return match.group(0)
            assert name.lower() in raw, f"undefined macro $({name})"
            return expand(raw[name.lower()], depth + 1)
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)

    assert queue is not None, "no queue statement"
    return {k: expand(v) for k, v in raw.items()}, queue


def test_submit_file_has_the_gpu_lab_and_checkpoint_settings():
    sub, _ = parse_submit(SUBMIT)
    assert sub["universe"] == "container"
    assert re.fullmatch(r"docker://pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn9-runtime", sub["container_image"])
    assert sub["request_gpus"] == "1"
    assert sub["+wantgpulab"].lower() == "true"
    assert sub["+gpujoblength"] in ('"short"', '"medium"')
    capability = re.search(r"Capability\s*>=\s*([\d.]+)", sub["require_gpus"])
    memory = re.search(r"GlobalMemoryMb\s*>=\s*(\d+)", sub["require_gpus"])
    assert capability and float(capability.group(1)) >= 9.0
    assert memory and int(memory.group(1)) >= 80000
    assert sub["checkpoint_exit_code"] == "85"
    assert sub["+is_resumable"].lower() == "true"
    assert sub["when_to_transfer_output"] == "ON_EXIT_OR_EVICT"
    assert sub["should_transfer_files"] == "YES"
    # the job's checkpoints and logs live under RESULTS_DIR, which both transfers cover
    results_dir = re.search(r"RESULTS_DIR=(\S+)", sub["environment"]).group(1)
    assert results_dir.startswith("results/") and "$(Cluster)_$(Process)" in results_dir
    assert sub["transfer_checkpoint_files"] == "results" and sub["transfer_output_files"] == "results"
    assert "CHECKPOINT_SECONDS=" in sub["environment"]


def test_submit_file_names_files_that_exist():
    sub, queue = parse_submit(SUBMIT)
    executable = REPO / sub["executable"]
    assert executable == WRAPPER and os.access(executable, os.X_OK)
    inputs = [item.strip() for item in sub["transfer_input_files"].split(",")]
    local = [item for item in inputs if "://" not in item]
    assert {"train.py", "model.py", "conv_lstm.py", "losses.py", "dataset_ivf.py", "build_index.py"} <= set(local)
    for item in local:
        assert (REPO / item).is_file(), f"transfer_input_files names {item}, which does not exist"
    staged = [item for item in inputs if "://" in item]
    assert staged and all(item.startswith("osdf:///chtc/staging/") for item in staged)
    for key in ("log", "output", "error"):
        assert sub[key].startswith("condor_logs/")
    match = re.fullmatch(r"queue\s+name\s*,\s*args\s+from\s+(\S+)", queue)
    assert match, queue
    assert (REPO / match.group(1)).is_file()


def test_every_sweep_line_is_a_valid_train_command():
    _, queue = parse_submit(SUBMIT)
    lines = [line for line in (REPO / queue.split()[-1]).read_text().splitlines() if line.strip()]
    assert len(lines) >= 2
    names = set()
    for line in lines:
        name, args = (part.strip() for part in line.split(",", 1))
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
        names.add(name)
        train.get_args_parser().parse_args(shlex.split(args))  # exits 2 on a bad flag
    assert len(names) == len(lines), "result folders need distinct names"


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
               OMP_NUM_THREADS="8")
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
    assert "time limit" in result.stdout


def test_wrapper_kills_a_hung_run_after_the_grace_time_and_still_exits_85(sandbox):
    job, env, _ = sandbox
    env.update(FAKE_MODE="deaf", CHECKPOINT_SECONDS="1", KILL_AFTER_SECONDS="1")
    assert run_wrapper(job, env).returncode == 85


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_wrapper_forwards_eviction_signals(sandbox, sig):
    job, env, log = sandbox
    env["FAKE_MODE"] = "sleep"
    proc = subprocess.Popen(["bash", str(WRAPPER)], cwd=job, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (log.exists() and "train.py" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == 85
    assert "python got TERM" in log.read_text()
