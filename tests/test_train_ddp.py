"""train.py under torchrun: 2 CPU processes with the gloo backend end with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import checkpoint as ckpt
from make_synthetic_data import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--warmup_epochs", "1", "--num_epochs", "2", "--clips_per_recording", "1"]


# Seen once in about 40 runs (30 Nov 2026), not reproduced since: a rank aborting in gloo's native code with this
# message and no Python error. One clean rerun is allowed for that failure alone, and the rerun must pass
# every check.
GLOO_ABORT = "terminate called without an active exception"


def torchrun(index_csv: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "train.py"), "--index_csv", str(index_csv), "--save_dir", str(out / "ckpt"),
               "--log_dir", str(out / "logs"), *TINY]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    index_csv = make_synthetic_dataset(tmp_path / "data", n_embryos=10, n_frames=8, size=32, seed=1)
    out = tmp_path / "run"
    result = torchrun(index_csv, out)
    if result.returncode != 0 and GLOO_ABORT in result.stderr and "Traceback (most recent call last)" not in \
            result.stderr.split(GLOO_ABORT)[0]:
        print(f"gloo abort, rerunning once:\n{result.stderr[-1500:]}")
        out = tmp_path / "rerun"
        result = torchrun(index_csv, out)
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(out / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    digest = ckpt.weights_digest(last["model_state_dict"])
    # every rank hashes its own weights at the end; rank 0 prints them all
    assert f"DDP: weights sha256 {digest[:16]} on ranks [0, 1]: identical" in result.stdout, result.stdout
    assert not any(k.startswith("module.") for k in last["model_state_dict"])
    assert len(last["rng_state"]) == 2  # one RNG state per rank
    log = json.loads((out / "logs" / "training_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    assert result.stdout.count("epoch 1/2") == 1  # only rank 0 prints and writes
