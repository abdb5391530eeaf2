"""The user's path as commands: make_synthetic_data -> train -> extract_latents -> analyze_latents."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cli import TRAJECTORY_DIR

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--num_epochs", "2", "--use_classifier", "--clips_per_recording", "1"]


def run(script: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{script}: {result.stderr[-2000:]}"
    return result


def test_train_extract_analyze(tmp_path):
    data = tmp_path / "data"
    run("make_synthetic_data.py", "--out", data, "--n_embryos", "8", "--n_frames", "10", "--size", "48",
        "--seed", "3")
    run("train.py", "--index_csv", data / "index.csv", "--annotations_dir", data / "annotations",
        "--save_dir", tmp_path / "ckpt", "--log_dir", tmp_path / "logs", *TINY)
    checkpoint = tmp_path / "ckpt" / "best.pt"
    for mode in ("trajectory", "clips"):
        run("extract_latents.py", "--checkpoint", checkpoint, "--index_csv", data / "index.csv",
            "--out", tmp_path / "latents", "--mode", mode, "--device", "cpu", "--num_workers", "0")
    meta = pd.read_csv(tmp_path / "latents" / TRAJECTORY_DIR / "metadata.csv")
    assert len(meta) == 8 and (meta["n_frames"] == 10).all()
    z = np.load(tmp_path / "latents" / TRAJECTORY_DIR / meta["file"][0])["z"]
    assert z.shape == (10, 8) and np.isfinite(z).all()
    run("analyze_latents.py", "--latents", tmp_path / "latents", "--out", tmp_path / "analysis")
    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    phase = summary["probes"]["phase"]
    assert 0 <= phase["linear"]["trained"]["decoded"]["balanced_accuracy"] <= 1
    assert phase["event_times"]["hours"]["n_embryos"] == phase["n_embryos"] > 0
    for name in ("probes.png", "morphokinetics.png", "morphokinetics.csv"):
        assert (tmp_path / "analysis" / name).is_file(), name
