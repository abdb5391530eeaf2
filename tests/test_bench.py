"""bench.py: every figure is measured and positive; the reference and the compiled cell compute the same."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import cli
from bench import PRESETS, PlainAutoencoder, reference_state_dict
from conv_lstm import ConvLSTM, compile_gate_updates, gate_update
from model import ConvLSTMAutoencoder, ModelConfig

REPO = Path(__file__).resolve().parents[1]


def positive_numbers(tree, where=""):
    """Every number in a nested dict/list, with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from positive_numbers(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for k, value in enumerate(tree):
            yield from positive_numbers(value, f"{where}[{k}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield where, tree


def test_tiny_run_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "bench.py", "--config", "tiny", "--steps", "2", "--warmup", "1",
                          "--threads", "1", "--num_workers", "0", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "speed-up over the reference" in run.stdout and "loader" in run.stdout
    result = json.loads(out.read_text())
    for side in ("project", "reference"):
        for key in ("step_s", "steps_per_s", "clips_per_s", "flops_per_step", "achieved_gflops",
                    "share_of_matmul", "peak_memory_mb"):
            assert result[side][key] > 0, (side, key)
        assert len(result[side]["step_s_rounds"]) == 2
    for key in ("fp32", "bf16"):
        assert result["matmul_gflops"][key] > 0, key
    for key in ("raw_jpeg_clips_per_s", "cached_clips_per_s", "model_clips_per_s", "cached_vs_model"):
        assert result["loader"][key] > 0, key
    loader = result["loader"]
    assert loader["limited_by"] == ("the loader" if loader["cached_clips_per_s"] < loader["model_clips_per_s"]
                                    else "the step") and f"{loader['limited_by']} limits" in run.stdout
    assert result["speedup_vs_reference"] > 0
    assert result["reference_max_abs_diff"] < 1e-4
    settings = ("model_config", "reference_max_abs_diff", "warmup")
    numbers = dict(positive_numbers({k: v for k, v in result.items() if k not in settings}))
    del numbers[".loader.num_workers"]
    assert all(value > 0 for value in numbers.values()), {k: v for k, v in numbers.items() if v <= 0}


def test_reference_holds_the_same_weights_and_computes_the_same_function():
    torch.manual_seed(0)
    config = ModelConfig(**PRESETS["tiny"].model)
    model = ConvLSTMAutoencoder(config)
    reference = PlainAutoencoder(config)
    reference.load_state_dict(reference_state_dict(model.state_dict()))  # strict: every key maps
    x = torch.rand(2, 3, 1, config.image_size, config.image_size)
    ours, theirs = model(x), reference(x)
    for key in ("reconstruction", "z_seq", "logits"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--device", "cpu", "--amp", "fp16"]])
def test_bad_arguments_exit_2_with_one_line(flags, capsys):
    assert cli.run_main("bench.py", bench.main, bench.get_args_parser().parse_args(["--config", "tiny", *flags])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench.py: error:") and len(err.splitlines()) == 1


def test_compiled_gate_updates_match_eager():
    torch.manual_seed(0)
    eager = ConvLSTM(2, 4, num_layers=2)
    fused = copy.deepcopy(eager)
    compile_gate_updates(fused)
    assert all(cell.update is not gate_update for cell in fused.cells)
    x = torch.randn(2, 3, 2, 6, 6, requires_grad=True)
    for stack in (eager, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = stack(x)
        out.float().square().sum().backward()
    torch.testing.assert_close(fused(x)[0], eager(x)[0])
    for (name, p), q in zip(eager.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=2e-2, atol=1e-3, msg=name)
    assert state[-1][1].dtype == torch.float32
