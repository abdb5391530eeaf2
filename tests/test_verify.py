"""verify_data_connection.py: the full data -> model -> loss -> step path, and its exit codes."""
import pandas as pd
import pytest

import train
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


@pytest.mark.parametrize("flags", [("--batch_size", "0"), ("--learning_rate", "-1"), ("--learning_rate", "nan"),
                                   ("--use_classifier", "--num_classes", "1"), ("--predict_next", "--seq_len", "1"),
                                   ("--amp", "fp16"), ("--predict_weight", "1"), ("--warmup_epochs", "60"),
                                   ("--clips_per_recording", "1000000000")])
def test_checks_exactly_what_train_checks(flags, tmp_path, capsys):
    """One function (train.prepare) for both: the same line, exit 2, before any data is made."""
    assert run(list(flags)) == 2
    captured = capsys.readouterr()
    verify_line = captured.err.strip()
    assert "no --index_csv" not in captured.out  # refused before any data is made
    args = train.get_args_parser().parse_args(TINY + ["--save_dir", str(tmp_path / "c"), "--log_dir",
                                                      str(tmp_path / "l"), *flags])
    assert train.main(args) == 2
    train_line = capsys.readouterr().err.strip()
    assert len(verify_line.splitlines()) == 1 and "Traceback" not in verify_line
    assert verify_line.removeprefix("verify_data_connection.py") == train_line.removeprefix("train.py")
