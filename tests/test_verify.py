"""verify_data_connection.py: the full data -> model -> loss -> step path, and its exit codes."""
import pandas as pd

from make_synthetic_data import make_synthetic_dataset
from verify_data_connection import get_args_parser, main

TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--decoder_hidden_dim", "8", "--encoder_layers", "1",
        "--decoder_layers", "1", "--seq_len", "4", "--num_workers", "0", "--device", "cpu", "--batch_size", "2"]


def run(extra):
    return main(get_args_parser().parse_args(TINY + extra))


def test_synthetic_default(capsys):
    assert get_args_parser().parse_args([]).index_csv is None
    assert run(["--use_classifier"]) == 0
    out = capsys.readouterr().out
    assert "batch: video (2, 4, 1, 32, 32)" in out and "logits (2, 2)" in out and out.strip().endswith("worked")


def test_given_index_with_cache_and_annotations(tmp_path, capsys):
    index = make_synthetic_dataset(tmp_path, n_embryos=3, n_frames=6, size=32, seed=1, fmt="avi")
    assert run(["--index_csv", str(index), "--cache_dir", str(tmp_path / "cache"), "--augment",
                "--annotations_dir", str(tmp_path / "annotations"), "--batch_size", "3", "--val_fraction", "0"]) == 0
    assert "batch: video (3, 4, 1, 32, 32)" in capsys.readouterr().out


def test_bad_input_exits_2(tmp_path, capsys):
    assert run(["--index_csv", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    pd.DataFrame([{"path": "nowhere"}]).to_csv(tmp_path / "index.csv", index=False)
    assert run(["--index_csv", str(tmp_path / "index.csv")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("verify_data_connection.py: error:") and "line 2" in last and "nowhere" in last
    assert main(get_args_parser().parse_args(TINY + ["--image_size", "30"])) == 2
