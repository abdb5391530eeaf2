"""gpu_check.py --dry_run: the GPU check's own code path (every step, the batch search, the JSON and the table) at a
toy size on the CPU, so that the script a GPU session runs has been run here."""

import json
import subprocess
import sys
from pathlib import Path

import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step_and_writes_the_figures(tmp_path):
    out = tmp_path / "gc"
    run = subprocess.run([sys.executable, "gpu_check.py", "--dry_run", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert set(result["steps"]) == {"device_tests", "bench_off", "bench_off_b4", "synthetic_data",
                                    "train_3_epochs_amp", "torchrun_1_process", "extract_trajectories"}
    assert all(step["ok"] for step in result["steps"].values()), result["steps"]
    for name in ("bench_off", "bench_off_b4"):
        row = result["summary"]["bench"][name]
        assert row["clips_per_s"] > 0 and row["share_of_bf16_matmul"] > 0 and row["peak_memory_mb"] > 0
        assert row["projected_50_epochs_min"] == 50 * 13_300 / row["clips_per_s"] / 60
    assert len(result["summary"]["train_clips_per_s"]) == 3
    assert result["summary"]["extract"]["n_embryos"] == 8
    assert result["batch_search"]["largest_batch"] == 4 and result["batch_search"]["capped_at"] == 4
    assert (out / "gpu_check.log").stat().st_size > 0
    assert "every step passed" in run.stdout and "50 epochs" in run.stdout


def test_unknown_compile_mode_is_one_line_exit_2(tmp_path, capsys):
    args = gpu_check.get_args_parser().parse_args(["--dry_run", "--out", str(tmp_path), "--compile_modes", "fast"])
    assert gpu_check.cli.run_main("gpu_check.py", gpu_check.main, args) == 2
    assert "--compile_modes" in capsys.readouterr().err
