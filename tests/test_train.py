"""train.py in-process: bad input (exit 2, nothing written), config mismatch, --resume_from,
labels reaching the classifier loss, a non-finite loss stopping the run (exit 3)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import bench
import train
from losses import AutoencoderLoss

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--warmup_epochs", "1", "--clips_per_recording", "1"]


def parse(index_csv, out: Path, *extra) -> object:
    return train.get_args_parser().parse_args(["--index_csv", str(index_csv), "--save_dir", str(out / "ckpt"),
                                               "--log_dir", str(out / "logs"), *TINY, *extra])


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes and mtime: to show that nothing was written."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, above all on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional): records the calls."""

    calls: list = []

    def __init__(self, log_dir):
        self.calls.append(("init", log_dir))

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, step))

    def add_image(self, tag, image, step):
        self.calls.append(("image", tag, image.shape, step))

    def flush(self):
        pass


@pytest.fixture(scope="module")
def classifier_run(index_csv, tmp_path_factory) -> Path:
    """One epoch with the classifier on and a visible classification weight."""
    out = tmp_path_factory.mktemp("classifier")
    assert train.main(parse(index_csv, out, "--num_epochs", "1", "--use_classifier", "--cls_weight", "1")) == 0
    return out


def test_resize_decoder_masked_frames_next_frame_guess_curves_and_tensorboard(index_csv, tmp_path, monkeypatch):
    """The experiment flags train; the curves PNG is written; with tensorboard installed (faked) it gets the
    epoch's numbers and the reconstruction image."""
    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1", "--upsample", "resize", "--mask_ratio",
                            "0.3", "--predict_next")) == 0
    logged = json.loads((tmp_path / "logs" / "training_log.json").read_text())[-1]
    assert logged["prediction"] > 0 and logged["val_prediction"] > 0  # the next-frame guess trained and scored
    png = (tmp_path / "logs" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    calls = FakeSummaryWriter.calls
    assert calls[0] == ("init", str(tmp_path / "logs" / "tensorboard"))
    assert ("scalar", "val_total", 1) in calls and ("scalar", "lr", 1) in calls
    assert [c for c in calls if c[0] == "image"] == [("image", "reconstruction (input above)", (1, 64, 128), 1)]


def test_every_objective_trains_and_is_weighed_in(index_csv, tmp_path):
    """Two views, the time gap over span clips, a primed start and the supervised phase head, for one epoch: each
    part is logged and weighed into the total; validation has no second view, so no contrast there."""
    weights = {"contrast": 0.5, "time_gap": 0.5, "phase": 0.2}
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1", "--sampling", "span", "--init_state", "prime",
                            "--contrast_weight", "0.5", "--time_gap_weight", "0.5", "--phase_weight", "0.2",
                            "--annotations_dir", str(index_csv.parent / "annotations"))) == 0
    entry = json.loads((tmp_path / "logs" / "training_log.json").read_text())[-1]
    assert all(entry[part] > 0 for part in weights) and entry["val_contrast"] == 0
    assert entry["val_time_gap"] > 0 and entry["val_phase"] > 0
    weighed = entry["reconstruction"] + 0.1 * entry["smooth"] + sum(w * entry[p] for p, w in weights.items())
    assert entry["total"] == pytest.approx(weighed, rel=1e-5)
    config = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["model_config"]
    assert config["init_state"] == "prime" and config["time_head"] and config["phase_head"]


def test_labels_reach_the_classification_loss(classifier_run):
    (entry,) = json.loads((classifier_run / "logs" / "training_log.json").read_text())
    assert entry["classification"] > 0 and entry["val_classification"] > 0
    assert entry["total"] > entry["reconstruction"] + 0.9 * entry["classification"]  # cls_weight 1 is applied


@pytest.mark.parametrize("case", ["missing", "empty", "image_size", "save_dir_under_a_file", "resume_from",
                                  "fp16_on_cpu", "batch_size", "label_out_of_range", "predict_one_frame",
                                  "time_gap_one_frame", "phase_without_annotations", "temperature"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, index_csv, tmp_path, capsys):
    extra, index = [], index_csv
    if case == "missing":
        index = tmp_path / "nope" / "index.csv"
    elif case == "empty":
        index = tmp_path / "index.csv"
        index.write_text("")
    elif case == "image_size":
        extra = ["--image_size", "30"]
    elif case == "save_dir_under_a_file":
        (tmp_path / "a_file").write_text("x")
        extra = ["--save_dir", str(tmp_path / "a_file" / "ckpt")]
    elif case == "resume_from":
        extra = ["--resume_from", str(tmp_path / "missing.pt")]
    elif case == "fp16_on_cpu":
        extra = ["--amp", "fp16"]
    elif case == "batch_size":
        extra = ["--batch_size", "0"]
    elif case == "predict_one_frame":  # no next frame to guess: under DDP an unused predictor would hang the run
        extra = ["--predict_next", "--seq_len", "1"]
    elif case == "time_gap_one_frame":  # no gap to time: the clock would get no gradient
        extra = ["--time_gap_weight", "0.5", "--seq_len", "1"]
    elif case == "phase_without_annotations":
        extra = ["--phase_weight", "0.5"]
    elif case == "temperature":
        extra = ["--contrast_weight", "0.5", "--contrast_temperature", "0"]
    elif case == "label_out_of_range":
        rows = pd.read_csv(index_csv, dtype=str)
        rows["path"] = [str(index_csv.parent / p) for p in rows["path"]]
        rows.loc[1, "label"] = "2"
        index = tmp_path / "index.csv"
        rows.to_csv(index, index=False)
        extra = ["--use_classifier", "--cache_dir", "off"]
    before = snapshot(tmp_path)
    assert train.main(parse(index, tmp_path, *extra)) == 2
    line = one_error_line(capsys)
    assert {"missing": "index.csv", "empty": "index.csv", "image_size": "multiple of 8",
            "save_dir_under_a_file": "--save_dir", "resume_from": "missing.pt", "fp16_on_cpu": "fp16",
            "batch_size": "--batch_size", "label_out_of_range": "label 2 is not below --num_classes 2",
            "predict_one_frame": "--predict_next and --time_gap_weight read two frames of a clip",
            "time_gap_one_frame": "need --seq_len 2 or more, got 1", "phase_without_annotations": "--annotations_dir",
            "temperature": "--contrast_temperature must be above 0"}[case] in line
    assert snapshot(tmp_path) == before and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("flags", [["--amp", "fp8"], ["--batch_size", "two"], ["--device", "tpu"],
                                   ["--num_workers", "-1"]])
def test_bad_flag_value_is_one_line_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        train.get_args_parser().parse_args(flags)
    assert exc.value.code == 2
    assert flags[0] in one_error_line(capsys)


def test_help_gives_every_flag_with_its_default():
    parser = train.get_args_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {"index_csv", "batch_size", "seq_len", "num_epochs", "learning_rate", "weight_decay", "l1_weight",
            "ms_ssim_weight", "smooth_weight", "use_classifier", "cls_weight", "save_dir", "log_dir", "resume_from",
            "image_size", "encoder_hidden_dim", "encoder_layers", "decoder_hidden_dim", "decoder_layers", "sampling",
            "normalize", "augment", "cache_dir", "val_fraction", "skip_bad", "num_workers", "annotations_dir",
            "save_every", "seed", "device", "amp", "compile", "grad_clip", "warmup_epochs"} <= {a.dest for a in flags}
    defaults = parser.parse_args([])
    assert (defaults.batch_size, defaults.seq_len, defaults.num_epochs, defaults.learning_rate) == (8, 20, 50, 3e-4)
    assert (defaults.save_dir, defaults.log_dir, defaults.save_every) == ("checkpoints", "logs", 5)


def test_process_exit_code_2_and_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--index_csv", str(tmp_path / "index.csv"),
                             "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "index.csv" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_model_config_mismatch_on_resume_exits_2_and_keeps_the_checkpoint(classifier_run, index_csv, capsys):
    before = snapshot(classifier_run)
    args = parse(index_csv, classifier_run, "--num_epochs", "2", "--use_classifier", "--encoder_hidden_dim", "16")
    assert train.main(args) == 2
    line = one_error_line(capsys)
    assert "encoder_hidden_dim=8 in the checkpoint, 16 from the flags" in line
    assert snapshot(classifier_run) == before


def test_resume_from_a_given_checkpoint(classifier_run, index_csv, tmp_path, capsys):
    source = classifier_run / "ckpt" / "last.pt"
    args = parse(index_csv, tmp_path, "--num_epochs", "2", "--use_classifier", "--cls_weight", "1",
                 "--resume_from", str(source))
    assert train.main(args) == 0
    assert capsys.readouterr().out.startswith(f"Resuming from {source} (epoch 1")
    log = json.loads((tmp_path / "logs" / "training_log.json").read_text())
    assert [e["epoch"] for e in log] == [2]  # the new log_dir starts where the checkpoint was
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 2
    assert train.main(args) == 0  # the same command again: nothing left to do
    assert "already finished" in capsys.readouterr().out


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(
        index_csv, tmp_path, capsys, monkeypatch):
    class NaNOnFifthStep(AutoencoderLoss):
        """Training step 5 (epoch 2, step 2 with 3 steps an epoch) returns a NaN total."""

        steps = 0

        def forward(self, output, batch):
            parts = super().forward(output, batch)
            if torch.is_grad_enabled():
                NaNOnFifthStep.steps += 1
                if NaNOnFifthStep.steps == 5:
                    parts["total"] = parts["total"] * float("nan")
            return parts

    monkeypatch.setattr(train, "AutoencoderLoss", NaNOnFifthStep)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "3", "--save_every", "1")) == 3
    assert "non-finite loss at epoch 2, step 2 of 3" in capsys.readouterr().err
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["partial_epoch"] is None
    assert all(torch.isfinite(t).all() for t in last["model_state_dict"].values())
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("[!.]*")) == ["best.pt", "checkpoint_epoch_1.pt", "last.pt"]
    assert len(json.loads((tmp_path / "logs" / "training_log.json").read_text())) == 1


def test_sigusr1_mid_epoch_saves_last_pt_and_returns_85(index_csv, tmp_path, capsys, monkeypatch):
    class SignalOnSecondStep(AutoencoderLoss):
        """The second training step sends this process SIGUSR1 (as a batch system would)."""

        steps = 0

        def forward(self, output, batch):
            if torch.is_grad_enabled():
                SignalOnSecondStep.steps += 1
                if SignalOnSecondStep.steps == 2:
                    signal.raise_signal(signal.SIGUSR1)
            return super().forward(output, batch)

    monkeypatch.setattr(train, "AutoencoderLoss", SignalOnSecondStep)
    handler = signal.getsignal(signal.SIGUSR1)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "2")) == 85
    assert signal.getsignal(signal.SIGUSR1) is handler  # main puts the old handlers back
    assert "SIGUSR1: saved" in capsys.readouterr().out
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and last["partial_epoch"]["step"] == 2 and last["global_step"] == 2


def test_compile_flag_alone_means_the_gate_arithmetic():
    parse = train.get_args_parser().parse_args
    assert [parse(f).compile for f in ([], ["--compile"], ["--compile", "gates"], ["--compile", "step"])] == \
        ["off", "gates", "gates", "step"]
    assert bench.get_args_parser().parse_args(["--compile_cell"]).compile == "gates"


def test_compiled_step_needs_a_full_batch(index_csv, tmp_path, capsys):
    args = train.get_args_parser().parse_args([*TINY, "--index_csv", str(index_csv), "--compile", "step",
                                               "--clips_per_recording", "1", "--batch_size", "64",
                                               "--save_dir", str(tmp_path / "c"), "--log_dir", str(tmp_path)])
    assert train.main(args) == 2
    assert "--compile step" in one_error_line(capsys) and not (tmp_path / "c").exists()
