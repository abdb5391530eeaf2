"""train.py as a process: outputs, SIGKILL + resume == uninterrupted (bit for bit), SIGTERM -> exit 85."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch

from cli import LOSS_KEYS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--warmup_epochs", "1", "--num_epochs", "3", "--save_every", "2", "--log_every", "1",
        "--clips_per_recording", "1"]
# One thread: bit-exact comparisons need the same thread count in every run, and spinning
# OpenMP threads on a shared 2-core machine make the runs needlessly slow.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LOG_KEYS = {"epoch", "lr", "total", "reconstruction", "l1", "ms_ssim", "smooth", "classification", "prediction",
            "val_total", "val_reconstruction", "val_l1", "val_ms_ssim", "val_smooth", "val_classification",
            "val_prediction", "epoch_time_s", "clips_per_s"}
CHECKPOINT_KEYS = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
                   "global_step", "best_val_loss", "losses", "model_config", "args", "rng_state"}


def command(index_csv: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--index_csv", str(index_csv),
            "--save_dir", str(out / "ckpt"), "--log_dir", str(out / "logs"), *TINY, *extra]


def run_to_end(index_csv: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    result = subprocess.run(command(index_csv, out, *extra), env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def start_and_wait_for(index_csv: Path, out: Path, relative: str, *extra) -> subprocess.Popen:
    """Start a run in its own process group and return once out/relative exists."""
    proc = subprocess.Popen(command(index_csv, out, *extra), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / relative).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {relative} after 240 s"
        time.sleep(0.01)
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training(out_a: Path, out_b: Path):
    """Final weights, optimizer state and logged losses are identical, bit for bit."""
    a, b = load(out_a / "ckpt" / "last.pt"), load(out_b / "ckpt" / "last.pt")
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name
    for pid, state in a["optimizer_state_dict"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer_state_dict"]["state"][pid][key]), (pid, key)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    log_a, log_b = (json.loads((o / "logs" / "training_log.json").read_text()) for o in (out_a, out_b))
    strip = ("epoch_time_s", "clips_per_s")
    assert [{k: v for k, v in e.items() if k not in strip} for e in log_a] == \
           [{k: v for k, v in e.items() if k not in strip} for e in log_b]


@pytest.fixture(scope="module")
def reference(index_csv, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run, with loader workers (the runs compared with it have none)."""
    out = tmp_path_factory.mktemp("reference")
    run_to_end(index_csv, out, "--num_workers", "2")
    return out


def test_outputs_have_the_promised_names_and_keys(reference):
    ckpt, logs = reference / "ckpt", reference / "logs"
    assert sorted(p.name for p in ckpt.glob("[!.]*")) == ["best.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt",
                                                     "last.pt"]
    last = load(ckpt / "last.pt")
    assert CHECKPOINT_KEYS <= set(last)
    assert last["epoch"] == 3 and last["global_step"] == 9  # 6 train clips / batch 2 = 3 steps an epoch
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model_state_dict"])
    assert last["model_config"]["encoder_hidden_dim"] == 8 and last["args"]["seq_len"] == 4
    split = pd.read_csv(logs / "split.csv")  # the run's split, also in the checkpoint for extraction (issue 22)
    assert last["split"] == dict(zip(split["cell_id"], split["split"], strict=True))
    assert load(ckpt / "checkpoint_epoch_2.pt")["epoch"] == 2
    log = json.loads((logs / "training_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2, 3]
    for entry in log:
        assert LOG_KEYS <= set(entry)
        assert all(entry[k] >= 0 for k in LOG_KEYS - {"epoch"})
    assert last["best_val_loss"] == min(e["val_total"] for e in log)
    image = cv2.imread(str(logs / "recon_epoch_3.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (2 * 32, 4 * 32)  # input row above reconstruction row, T = 4 frames of 32 px
    assert {p.name for p in logs.glob("recon_epoch_*.png")} == {f"recon_epoch_{n}.png" for n in (1, 2, 3)}
    assert not list(ckpt.glob(".*.tmp")) and not list(logs.glob(".*.tmp"))


def test_sigkill_at_a_random_point_then_resume_equals_uninterrupted(index_csv, reference, tmp_path):
    delay = random.Random().uniform(0.0, 1.5)
    print(f"SIGKILL {delay:.2f} s after the first last.pt")  # shown if the test fails
    proc = start_and_wait_for(index_csv, tmp_path, "ckpt/last.pt")  # the initial last.pt, before the first step
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    resumed = run_to_end(index_csv, tmp_path)
    assert "Resuming from" in resumed.stdout or proc.returncode == 0, (delay, resumed.stdout)
    assert_same_training(reference, tmp_path)


def test_sigterm_mid_epoch_saves_last_pt_exits_85_and_rerun_continues(index_csv, reference, tmp_path):
    # The initial last.pt (epoch 0) is written after setup, just before the first step: the
    # signal lands inside epoch 1, so the resume has to skip the batches already done.
    proc = start_and_wait_for(index_csv, tmp_path, "ckpt/last.pt")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 85, stderr
    assert "SIGTERM: saved" in stdout
    print(f"SIGTERM to exit 85: {took:.2f} s")
    last = load(tmp_path / "ckpt" / "last.pt")  # weights_only load of the preemption checkpoint
    assert last["epoch"] == 0 and last["partial_epoch"]["step"] >= 1
    # as written before the sums were named and the `prediction` loss part existed: a list in LOSS_KEYS' order, one
    # running sum fewer (it was 0 without --predict_next)
    sums = last["partial_epoch"]["sums"]
    assert list(sums) == list(LOSS_KEYS) and sums["prediction"] == 0
    last["partial_epoch"]["sums"] = [sums[k] for k in LOSS_KEYS[:-1]]
    torch.save(last, tmp_path / "ckpt" / "last.pt")
    resumed = run_to_end(index_csv, tmp_path)
    assert resumed.stdout.startswith("Resuming from"), resumed.stdout
    assert_same_training(reference, tmp_path)


# Runs a script with a signal sent to its whole process group from inside its first loader worker of the training
# (`train`) or another (`val`) loader, at the moment a worker exists but has not run its init function: what a
# terminal's Ctrl-C or `timeout` sends when it lands at an epoch's start, a validation's, or an extraction's.
GROUP_SIGNAL_AT_WORKER_START = """
import os, signal, sys
import torch.utils.data._utils.worker as worker
loader, name, script, *argv = sys.argv[1:]

class SignalTheGroup(worker.WorkerInfo):
    def __init__(self, **kwargs):  # made in each worker just before its worker_init_fn
        super().__init__(**kwargs)
        if kwargs["id"] == 0 and kwargs["dataset"].training == (loader == "train"):
            os.killpg(os.getpgid(0), getattr(signal, name))

worker.WorkerInfo = SignalTheGroup
import cli
module = __import__(script)
args = module.get_args_parser().parse_args(argv)
sys.exit(module.main(args) if script == "train" else cli.run_main(script + ".py", module.run, args))
"""


def run_with_a_group_signal_at_worker_start(loader: str, name: str, script: str, *argv) -> subprocess.CompletedProcess:
    """The script in a session of its own, its process group signalled as GROUP_SIGNAL_AT_WORKER_START says; returns
    once no process of it is left (its workers included)."""
    result = subprocess.run([sys.executable, "-c", GROUP_SIGNAL_AT_WORKER_START, loader, name, script, *argv],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, start_new_session=True)
    marker = argv[argv.index("--out" if "--out" in argv else "--save_dir") + 1].encode()
    deadline = time.monotonic() + 120  # workers of a dead main process end within seconds (torch's watchdog)
    while [p for p in Path("/proc").glob("[0-9]*") if marker in read_cmdline(p)]:
        assert time.monotonic() < deadline, "loader workers outlived the run"
        time.sleep(0.05)
    return result


@pytest.mark.parametrize("loader,name", [("train", "SIGTERM"), ("val", "SIGINT")])
def test_a_group_signal_as_loader_workers_start_spares_them_and_saves(loader, name, index_csv, tmp_path):
    """`timeout` and shells signal the whole process group (a terminal's Ctrl-C too): the workers are out of its
    reach at any moment, epoch starts and validations included; the main process saves and exits 85 (130)."""
    argv = command(index_csv, tmp_path, "--num_workers", "2")[2:]
    result = run_with_a_group_signal_at_worker_start(loader, name, "train", *argv)
    code = 130 if name == "SIGINT" else 85
    assert result.returncode == code, result.stderr
    assert f"{name}: saved {tmp_path / 'ckpt' / 'last.pt'} at epoch 1, step " in result.stdout
    assert "Traceback" not in result.stderr and "killed by signal" not in result.stderr
    last = load(tmp_path / "ckpt" / "last.pt")
    assert last["epoch"] == 0 and last["partial_epoch"]["step"] == (1 if loader == "train" else 3)


def read_cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def test_sigterm_mid_epoch_with_several_clips_per_recording_resumes_bit_identical(index_csv, tmp_path):
    """K = 3 clips per recording: the skipped batches of the resumed epoch are the same K-fold clips."""
    reference = tmp_path / "reference"
    done = run_to_end(index_csv, reference, "--clips_per_recording", "3")
    assert ("Run plan: 6 training recordings x 3 clips = 18 clips an epoch, 9 steps an epoch (batch 2); 3 epochs = "
            "27 steps, warm-up 9 steps; validation 2 clips (one per recording)") in done.stdout
    last = load(reference / "ckpt" / "last.pt")
    assert last["global_step"] == 27 and last["data_config"]["clips_per_recording"] == 3
    interrupted = tmp_path / "interrupted"  # signalled once the initial last.pt exists: inside epoch 1
    proc = start_and_wait_for(index_csv, interrupted, "ckpt/last.pt", "--clips_per_recording", "3")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 85, stderr
    assert load(interrupted / "ckpt" / "last.pt")["partial_epoch"]["step"] >= 1
    resumed = run_to_end(index_csv, interrupted, "--clips_per_recording", "3")
    assert resumed.stdout.startswith("Resuming from"), resumed.stdout
    assert_same_training(reference, interrupted)
