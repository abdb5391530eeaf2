"""What `make demo` relies on: a short run improves validation loss, and the report reads the outputs."""

import json

import pytest
import torch

import demo_report
import train
from cli import run_main
from make_synthetic_data import make_synthetic_dataset


def test_short_run_improves_validation_loss(tmp_path):
    """Realistic wells (position, zona, gain, time stamp vary): 30 tiny epochs, about 3 s on one thread."""
    index_csv = make_synthetic_dataset(tmp_path / "data", n_embryos=10, n_frames=12, size=32, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = train.get_args_parser().parse_args([
            "--index_csv", str(index_csv), "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"),
            "--image_size", "32", "--encoder_hidden_dim", "16", "--encoder_layers", "1", "--decoder_hidden_dim", "16",
            "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
            "--amp", "off", "--num_epochs", "30", "--learning_rate", "5e-3", "--warmup_epochs", "1",
            "--clips_per_recording", "1"])
        assert train.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    history = json.loads((tmp_path / "logs" / "training_log.json").read_text())
    assert len(history) == 30
    assert history[-1]["val_total"] < 0.9 * history[0]["val_total"]
    assert history[-1]["val_ms_ssim"] < history[0]["val_ms_ssim"]


def _phase(balanced, decoded, within):
    return {"balanced_accuracy": balanced, "decoded": {"balanced_accuracy": decoded, "within_one": within}}


def test_report_prints_outputs_and_headline_numbers(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "analysis").mkdir()
    log = [{"epoch": 1, "val_total": 0.8, "val_ms_ssim": 0.6}, {"epoch": 2, "val_total": 0.2, "val_ms_ssim": 0.25}]
    (tmp_path / "logs" / "training_log.json").write_text(json.dumps(log))
    phase = {"metric": "balanced_accuracy", "n_embryos": 9, "grouped_by": "embryo",
             "linear": {"trained": _phase(0.7, 0.75, 0.9), "untrained": _phase(0.3, 0.35, 0.6),
                        "pixels": _phase(0.45, 0.5, 0.7), "majority": _phase(0.0625, 0.0625, 0.2)},
             "event_times": {"hours": {"n_embryos": 9, "mae": {"trained": 4.04, "untrained": 9.0, "pixels": 7.0,
                                                               "majority": 30.0, "median_onset": 5.0}}}}
    hours = {"metric": "r2", "unit": "hours", "n_embryos": 10, "grouped_by": "embryo",
             "linear": {"trained": {"r2": 0.9, "mae": 4.0}, "untrained": {"missing": "no z_untrained"},
                        "pixels": {"missing": "no pixels"}, "majority": {"r2": -0.01, "mae": 20.0}}}
    summary = {"figures": ["a.png", "b.png"],
               "classification": {"roc_auc": 0.98, "source": "model classifier probabilities (clips/probs.npy)",
                                  "by_split": {"val": {"roc_auc": 1.0}}},
               "probes": {"phase": phase, "hours": hours, "label": None}}
    (tmp_path / "analysis" / "summary.json").write_text(json.dumps(summary))
    assert demo_report.main(demo_report.get_args_parser().parse_args(["--demo_dir", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "epoch 1: 0.400   epoch 2: 0.750" in out
    assert "ROC AUC 0.980 on all wells, 1.000 on validation wells" in out
    headline = out.split("Headline numbers\n")[1].splitlines()
    assert headline[0].split()[:2] == ["margins", "phase"]  # the first numbers: trained minus the untrained model
    assert ("phase (decoded) balanced accuracy +0.400 over untrained, +0.250 over pixels; hours R^2 untrained "
            "missing, pixels missing" in headline[0])
    assert ("balanced accuracy: trained 0.700, untrained 0.300, pixels 0.450, majority 0.062 (9 embryos, folds "
            "grouped by embryo)" in headline[1])
    assert ("balanced accuracy: trained 0.750, untrained 0.350, pixels 0.500, majority 0.062; within one phase: "
            "trained 0.900, untrained 0.600" in headline[2])
    assert "MAE of the onsets (hours): trained 4.0, untrained 9.0, pixels 7.0, majority 30.0, median_onset 5.0" \
        in headline[3]
    assert ("R^2: trained 0.900, untrained missing, pixels missing, majority -0.010; MAE (hours): trained 4.00, "
            "untrained missing" in headline[4])
    assert headline[5].split()[:3] == ["label", "not", "run"]  # one line per probe, in the summary's order
    assert "2 figures" in out


def test_report_without_outputs_says_to_run_the_demo(tmp_path, capsys):
    assert run_main("demo_report.py", demo_report.main,
                    demo_report.get_args_parser().parse_args(["--demo_dir", str(tmp_path)])) == 2
    assert "run `make demo` first" in capsys.readouterr().err


SUMMARY = {"figures": [], "probes": {},
           "classification": {"roc_auc": None, "source": "model classifier probabilities (clips/probs.npy)"}}
LOG = [{"epoch": 1, "val_total": 0.8, "val_ms_ssim": 0.6}]


@pytest.mark.parametrize("case,message", [
    ("no folder", "is not a folder; run `make demo` first"),
    ("a file", "is not a folder; run `make demo` first"),
    ("no log", "training_log.json is missing; run `make demo` first"),
    ("empty log", "training_log.json holds no epoch; run train.py again"),
    ("truncated summary", "summary.json cannot be read (JSONDecodeError); run analyze_latents.py again"),
    ("summary without probes", "lacks what the report reads (KeyError: 'probes')"),
    ("log of other things", "training_log.json is not a list of epochs"),
])
def test_partial_demo_outputs_are_one_line_naming_what_is_missing(case, message, tmp_path, capsys):
    demo = tmp_path / "demo"
    if case == "a file":
        demo.write_text("not a folder")
    elif case != "no folder":
        (demo / "logs").mkdir(parents=True)
        (demo / "analysis").mkdir()
        log = {"no log": None, "empty log": [], "log of other things": [1, 2]}.get(case, LOG)
        if log is not None:
            (demo / "logs" / "training_log.json").write_text(json.dumps(log))
        summary = {k: v for k, v in SUMMARY.items() if case != "summary without probes" or k != "probes"}
        text = json.dumps(summary)
        (demo / "analysis" / "summary.json").write_text(text[:20] if case == "truncated summary" else text)
    code = run_main("demo_report.py", demo_report.main, demo_report.get_args_parser().parse_args(["--demo_dir",
                                                                                                  str(demo)]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_report_of_a_run_without_validation_and_a_single_class(tmp_path, capsys):
    """--val_fraction 0 logs no validation loss; one class among the wells has no ROC AUC."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "analysis").mkdir()
    log = [{"epoch": e, "total": t, "ms_ssim": m, "val_total": None, "val_ms_ssim": None}
           for e, t, m in ((1, 0.8, 0.6), (2, 0.3, 0.2))]
    (tmp_path / "logs" / "training_log.json").write_text(json.dumps(log))
    (tmp_path / "analysis" / "summary.json").write_text(json.dumps(SUMMARY))
    assert demo_report.main(demo_report.get_args_parser().parse_args(["--demo_dir", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "training MS-SSIM     epoch 1: 0.400   epoch 2: 0.800   (training (no validation split) loss 0.800 -> " \
           "0.300, best at epoch 2)" in out
    assert "ROC AUC undefined (one class among the labelled wells) on all wells" in out
