"""train.py under torchrun: 2 CPU processes with the gloo backend end with identical weights, equal within rounding
to one process taking both processes' batches, eager and with --compile gates or step; --compile gates trains and
validates (short last batches, the B=1 reconstruction) without running past torch's recompile limit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint as ckpt
from make_synthetic_data import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
# encoder and decoder of different widths: the compiled gate arithmetic sees both
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "16",
        "--decoder_layers", "1", "--seq_len", "2", "--num_workers", "0", "--device", "cpu", "--amp", "off",
        "--warmup_epochs", "1", "--num_epochs", "2", "--val_fraction", "0.4"]
# 12 wells, 40% of the patients in validation: 6 training and 6 validation recordings. Two clips per recording make
# 12 training clips, whole batches of 4 (one process) or 2 + 2 (two): the same clips in every step either way.
EVEN = ["--clips_per_recording", "2"]
RECOMPILE_LIMIT = "recompile_limit"  # torch's warning when a compiled function falls back to eager

# Seen once in about 40 runs (30 Nov 2026), not reproduced since: a rank aborting in gloo's native code with this
# message and no Python error. One clean rerun is allowed for that failure alone, and the rerun must pass
# every check.
GLOO_ABORT = "terminate called without an active exception"


@pytest.fixture(scope="module")
def wells(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_embryos=12, n_frames=8, size=32, seed=1)


def train(index_csv: Path, out: Path, *flags: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else []
    command = [sys.executable, *launcher, str(REPO / "train.py"), "--index_csv", str(index_csv),
               "--save_dir", str(out / "ckpt"), "--log_dir", str(out / "logs"), *TINY, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def torchrun(index_csv: Path, out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Two gloo processes of train.py (one clean rerun after gloo's abort at teardown); the result and its folder."""
    result = train(index_csv, out, *flags, processes=2)
    if result.returncode != 0 and GLOO_ABORT in result.stderr and "Traceback (most recent call last)" not in \
            result.stderr.split(GLOO_ABORT)[0]:
        print(f"gloo abort, rerunning once:\n{result.stderr[-1500:]}")
        out = out.with_name(out.name + "_rerun")
        result = train(index_csv, out, *flags, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt" / "last.pt", map_location="cpu", weights_only=True)["model_state_dict"]


def log(out: Path) -> list[dict]:
    return json.loads((out / "logs" / "training_log.json").read_text())


def assert_same_run(out: Path, reference: Path):
    """Weights and every logged loss of two runs agree within rounding."""
    expected = weights(reference)
    for name, value in weights(out).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=2e-5, msg=name)
    for got, want in zip(log(out), log(reference), strict=True):
        for key in ("total", "l1", "ms_ssim", "smooth", "val_total", "val_l1", "val_ms_ssim"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["epoch"], key)


@pytest.fixture(scope="module")
def one_process(wells, tmp_path_factory) -> Path:
    """The reference: one eager process, batches of 4."""
    out = tmp_path_factory.mktemp("one_process")
    result = train(wells, out, *EVEN, "--batch_size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_gloo_ranks_end_with_identical_weights_equal_to_one_process(wells, one_process, tmp_path):
    result, out = torchrun(wells, tmp_path / "run", *EVEN, "--batch_size", "2")
    digest = ckpt.weights_digest(weights(out))
    # every rank hashes its own weights at the end; rank 0 prints them all
    assert f"DDP: weights sha256 {digest[:16]} on ranks [0, 1]: identical" in result.stdout, result.stdout
    last = torch.load(out / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in last["model_state_dict"])
    assert len(last["rng_state"]) == 2  # one RNG state per rank
    assert [e["epoch"] for e in log(out)] == [1, 2] and log(out)[-1]["global_step"] == 6
    assert result.stdout.count("epoch 1/2") == 1  # only rank 0 prints and writes
    assert "0 loader workers a process" in result.stdout
    assert_same_run(out, one_process)


@pytest.mark.parametrize("mode", ["gates", "step"])
def test_compiled_ddp_equals_one_eager_process(wells, one_process, tmp_path, mode):
    """The compiled forward on the DDP-wrapped model (gates: the cells' arithmetic; step: forward and loss whole)."""
    result, out = torchrun(wells, tmp_path / mode, *EVEN, "--batch_size", "2", "--compile", mode)
    assert RECOMPILE_LIMIT not in result.stderr, result.stderr[-3000:]
    assert_same_run(out, one_process)


def test_compiled_gates_train_and_validate_without_recompiling_past_the_limit(wells, tmp_path):
    """6 training and 6 validation clips in batches of 4 (4 and 2 each), the B=1 reconstruction, two layer widths,
    with and without grad: 10 static variants, past torch's 8, which dynamic shapes keep to a few."""
    result = train(wells, tmp_path, "--clips_per_recording", "1", "--batch_size", "4", "--compile", "gates")
    assert result.returncode == 0, result.stderr[-3000:]
    assert RECOMPILE_LIMIT not in result.stderr and "recompil" not in result.stdout, result.stderr[-3000:]
    assert [(e["epoch"], e["global_step"]) for e in log(tmp_path)] == [(1, 2), (2, 4)]
