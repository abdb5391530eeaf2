"""Issue 11, train.py side: non-finite weights and validation losses never saved, the save_dir lock, resume
with changed flags, bad numbers, disk full, another run's files, malformed checkpoints, a damaged log, stop
signals during setup and validation, --keep_checkpoints."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from test_train import one_error_line, one_thread, parse, snapshot  # noqa: F401 (one_thread: autouse fixture)

import checkpoint as ckpt
import cli
import train
from losses import AutoencoderLoss

REPO = Path(__file__).resolve().parents[1]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_every_checkpoint_finite(folder: Path):
    for path in folder.glob("*.pt"):
        ckpt.load_checkpoint(path)  # raises on non-finite weights


@pytest.fixture(scope="module")
def one_epoch(index_csv, tmp_path_factory) -> Path:
    """A finished 1-epoch run: ckpt/{best,checkpoint_epoch_1,last}.pt and logs/."""
    out = tmp_path_factory.mktemp("one_epoch")
    assert train.main(parse(index_csv, out, "--num_epochs", "1", "--save_every", "1")) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    return tmp_path


# 1. non-finite weights and validation losses
def test_diverging_last_step_of_an_epoch_saves_no_non_finite_weights(index_csv, tmp_path, capsys):
    diverge = ["--batch_size", "16", "--learning_rate", "1e39", "--warmup_epochs", "0"]  # one step an epoch
    assert train.main(parse(index_csv, tmp_path, *diverge, "--num_epochs", "1")) == 3
    assert "non-finite weights after epoch 1" in one_error_line(capsys)
    assert_every_checkpoint_finite(tmp_path / "ckpt")
    assert load(tmp_path / "ckpt" / "last.pt")["epoch"] == 0 and not (tmp_path / "ckpt" / "best.pt").exists()
    assert not (tmp_path / "logs" / "training_log.json").exists()
    assert train.main(parse(index_csv, tmp_path, *diverge, "--num_epochs", "2")) == 3  # the rerun: same, finite
    assert "non-finite weights after epoch 1" in capsys.readouterr().err
    assert_every_checkpoint_finite(tmp_path / "ckpt")


def test_stop_signal_after_a_diverging_step_saves_no_non_finite_weights(index_csv, tmp_path, capsys, monkeypatch):
    class SignalOnFirstStep(AutoencoderLoss):
        def forward(self, output, batch):
            if torch.is_grad_enabled():
                signal.raise_signal(signal.SIGUSR1)
            return super().forward(output, batch)

    monkeypatch.setattr(train, "AutoencoderLoss", SignalOnFirstStep)
    args = parse(index_csv, tmp_path, "--learning_rate", "1e39", "--warmup_epochs", "0", "--num_epochs", "1")
    assert train.main(args) == 3
    assert "non-finite weights at epoch 1, step 1" in one_error_line(capsys)
    last = load(tmp_path / "ckpt" / "last.pt")
    assert last["epoch"] == 0 and last["partial_epoch"] is None
    assert_every_checkpoint_finite(tmp_path / "ckpt")


def test_non_finite_validation_loss_exits_3(index_csv, tmp_path, capsys, monkeypatch):
    class NaNInValidation(AutoencoderLoss):
        def forward(self, output, batch):
            parts = super().forward(output, batch)
            if not torch.is_grad_enabled():
                parts["total"] = parts["total"] * float("nan")
            return parts

    monkeypatch.setattr(train, "AutoencoderLoss", NaNInValidation)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1")) == 3
    assert "non-finite val_total (nan) at epoch 1" in one_error_line(capsys)
    assert not (tmp_path / "logs" / "training_log.json").exists()
    assert load(tmp_path / "ckpt" / "last.pt")["epoch"] == 0


# 2. the save_dir lock
def test_save_dir_of_a_live_run_is_refused_and_a_stale_lock_taken_over(index_csv, tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, checkpoint\n"
                               "held = checkpoint.RunLock(sys.argv[1]).__enter__()\nprint('locked', flush=True)\n"
                               "time.sleep(300)", str(tmp_path / "ckpt")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(tmp_path)
        assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1")) == 2
        line = one_error_line(capsys)
        assert f"is in use by a running training (pid {holder.pid} on" in line and "--save_dir" in line
        assert snapshot(tmp_path) == before and not (tmp_path / "logs").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1")) == 0  # killed: its lock is stale
    assert f"Taking over {tmp_path / 'ckpt' / '.train.lock'} left by a run that ended without releasing it " \
           f"(pid {holder.pid}" in capsys.readouterr().err


# 3. resume with changed flags
def test_every_train_flag_has_a_resume_policy():
    dests = {a.dest for a in train.get_args_parser()._actions if a.option_strings and a.dest != "help"}
    assert dests == set(ckpt.RESUME_FLAGS)
    assert set(ckpt.RESUME_FLAGS.values()) == {"refuse", "announce", "quiet"}


def test_resume_refuses_flags_that_change_the_run(one_epoch, index_csv, tmp_path, capsys):
    run = copy_of(one_epoch, tmp_path)
    before = snapshot(run)
    args = parse(index_csv, run, "--num_epochs", "2", "--batch_size", "4", "--learning_rate", "1e-3")
    assert train.main(args) == 2
    line = one_error_line(capsys)
    assert "--batch_size 2 (now 4)" in line and "--learning_rate 0.0003 (now 0.001)" in line
    assert "checkpoint's values, or start a new run in a new --save_dir" in line
    assert snapshot(run) == before


def test_resume_mid_epoch_with_another_batch_size_is_refused(index_csv, tmp_path, capsys, monkeypatch):
    class SignalOnSecondStep(AutoencoderLoss):
        steps = 0

        def forward(self, output, batch):
            if torch.is_grad_enabled():
                SignalOnSecondStep.steps += 1
                if SignalOnSecondStep.steps == 2:
                    signal.raise_signal(signal.SIGTERM)
            return super().forward(output, batch)

    monkeypatch.setattr(train, "AutoencoderLoss", SignalOnSecondStep)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1", "--batch_size", "1")) == 85
    assert load(tmp_path / "ckpt" / "last.pt")["partial_epoch"]["step"] == 2
    capsys.readouterr()
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1", "--batch_size", "2")) == 2
    assert "--batch_size 1 (now 2)" in one_error_line(capsys)


def test_resume_applies_announced_flags_and_passes_harmless_ones(one_epoch, index_csv, tmp_path, capsys):
    run = copy_of(one_epoch, tmp_path)
    args = parse(index_csv, run, "--num_epochs", "2", "--log_every", "3", "--cache_dir", "off", "--save_every", "2")
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "--num_epochs changed from 1 to 2 since" in out and "applied from here on" in out
    assert "log_every" not in out and "cache_dir" not in out and "save_every" not in out
    assert load(run / "ckpt" / "last.pt")["epoch"] == 2


def test_switching_to_the_compiled_step_on_resume_is_refused(one_epoch, index_csv, tmp_path, capsys):
    """--compile step drops the short last batch, so the epoch would change length under a saved position."""
    run = copy_of(one_epoch, tmp_path)
    assert train.main(parse(index_csv, run, "--num_epochs", "2", "--compile", "step")) == 2
    assert "--compile off (now step)" in one_error_line(capsys)


def test_checkpoint_of_an_earlier_version_continues(one_epoch, index_csv, tmp_path, capsys):
    """Written before upsample, data_config and the percentile name existed, from another path to the same
    index.csv (a job's checkpoint continued elsewhere): the same command continues it, saying what it moved."""
    run = copy_of(one_epoch, tmp_path)
    old = load(run / "ckpt" / "last.pt")
    del old["model_config"]["upsample"], old["data_config"]
    old["args"].update(normalize="minmax01", index_csv="/elsewhere/index.csv")
    for name in ("upsample", "mask_ratio", "clips_per_recording"):
        old["args"].pop(name)
    torch.save(old, run / "ckpt" / "last.pt")
    assert train.main(parse(index_csv, run, "--num_epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "Resuming from" in out and "--index_csv changed from /elsewhere/index.csv to" in out
    assert "normalize" not in out and load(run / "ckpt" / "last.pt")["epoch"] == 2


# 4. numbers that argparse accepts and the run cannot use
@pytest.mark.parametrize("flag,value", [
    ("--encoder_layers", "0"), ("--decoder_layers", "0"), ("--encoder_hidden_dim", "0"), ("--decoder_hidden_dim", "0"),
    ("--kernel_size", "-1"), ("--seed", "4294967296"), ("--seed", "-1"), ("--learning_rate", "inf"),
    ("--l1_weight", "inf"), ("--weight_decay", "inf"), ("--learning_rate", "nan"), ("--l1_weight", "nan"),
    ("--weight_decay", "nan"), ("--ms_ssim_weight", "nan"), ("--grad_clip", "inf"), ("--keep_checkpoints", "-1"),
    ("--warmup_epochs", "inf"), ("--mask_ratio", "nan")])
def test_bad_numbers_exit_2_naming_the_flag_and_write_nothing(flag, value, index_csv, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert train.main(parse(index_csv, tmp_path, flag, value)) == 2
    assert one_error_line(capsys).startswith(f"train.py: error: {flag} must be")
    assert snapshot(tmp_path) == before and not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()


# issue 22: flags that do nothing, or that the run cannot use, are refused before anything is written
@pytest.mark.parametrize("flags,message", [
    (("--predict_weight", "1"), "--predict_weight weights a loss part that only --predict_next turns on"),
    (("--cls_weight", "2"), "--cls_weight weights a loss part that only --use_classifier turns on"),
    (("--warmup_epochs", "5", "--num_epochs", "3"), "--warmup_epochs 5.0 is longer than the run (--num_epochs 3)"),
    (("--clips_per_recording", "1000000000"), "--clips_per_recording must be in [1, 1000], got 1000000000"),
    (("--use_classifier", "--num_classes", "1"), "--num_classes must be at least 2 for the classifier, got 1"),
    (("--resume_from", "{tmp_path}"), "--resume_from {tmp_path} is a folder; pass a checkpoint in it, such as"),
])
def test_flags_that_do_nothing_or_cannot_run_exit_2_and_write_nothing(flags, message, index_csv, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert train.main(parse(index_csv, tmp_path, *(f.format(tmp_path=tmp_path) for f in flags))) == 2
    assert message.format(tmp_path=tmp_path) in one_error_line(capsys)
    assert snapshot(tmp_path) == before and not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()


def test_clips_per_recording_on_clip_rows_is_refused(index_csv, tmp_path, capsys):
    """Clip rows give one clip each: --clips_per_recording would be ignored."""
    frames = sorted(str(p) for p in (index_csv.parent / pd.read_csv(index_csv)["path"][0]).iterdir())
    pd.DataFrame([{"cell_id": "AA1-1", "start_idx": s, "paths": "|".join(frames[s:s + 4])} for s in (0, 2, 4)]
                 ).to_csv(tmp_path / "clip_rows.csv", index=False)
    args = parse(tmp_path / "clip_rows.csv", tmp_path, "--clips_per_recording", "3", "--val_fraction", "0")
    assert train.main(args) == 2
    assert "--clips_per_recording draws clips from video rows, but" in one_error_line(capsys)
    assert not (tmp_path / "ckpt").exists()


# 5. disk full
def fsync_fails_under(folder: Path):
    real = os.fsync

    def fsync(fd):
        if str(folder) in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    return fsync


def test_disk_full_while_saving_exits_74_and_keeps_the_previous_files(one_epoch, index_csv, tmp_path, capsys,
                                                                      monkeypatch):
    run = copy_of(one_epoch, tmp_path)
    checkpoints = {p: p.read_bytes() for p in (run / "ckpt").glob("*.pt")}
    monkeypatch.setattr(cli.os, "fsync", fsync_fails_under(run / "ckpt"))
    assert train.main(parse(index_csv, run, "--num_epochs", "2", "--save_every", "1")) == 74
    line = one_error_line(capsys)
    assert f"cannot write {run / 'ckpt'}" in line and "No space left on device" in line
    assert {p: p.read_bytes() for p in (run / "ckpt").glob("*.pt")} == checkpoints
    assert not list(run.rglob("*.tmp"))


def test_disk_full_while_caching_frames_exits_74(index_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "fsync", fsync_fails_under(tmp_path / "cache"))
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1", "--cache_dir", str(tmp_path / "cache"))) == 74
    line = one_error_line(capsys)
    assert f"cannot write {tmp_path / 'cache'}" in line and "No space left on device" in line
    assert not list(tmp_path.rglob("*.tmp")) and not (tmp_path / "ckpt").exists()


# 7. another run's files
@pytest.mark.parametrize("case", ["best_only", "epoch_file_only", "last_is_a_folder"])
def test_another_runs_results_are_never_overwritten(case, one_epoch, index_csv, tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    best = one_epoch / "ckpt" / "best.pt"
    if case == "epoch_file_only":
        shutil.copy(best, tmp_path / "ckpt" / "checkpoint_epoch_7.pt")
    else:
        shutil.copy(best, tmp_path / "ckpt" / "best.pt")
    if case == "last_is_a_folder":
        (tmp_path / "ckpt" / "last.pt").mkdir()
    before = snapshot(tmp_path)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1")) == 2
    line = one_error_line(capsys)
    assert {"best_only": "holds another run's results (best.pt)",
            "epoch_file_only": "holds another run's results (checkpoint_epoch_7.pt)",
            "last_is_a_folder": "last.pt is not a file"}[case] in line
    assert snapshot(tmp_path) == before and not (tmp_path / "logs").exists()


# 8. malformed checkpoints
@pytest.mark.parametrize("case", ["tensor", "no_optimizer", "nan_weights"])
def test_malformed_last_pt_exits_2_with_one_line(case, one_epoch, index_csv, tmp_path, capsys):
    run = copy_of(one_epoch, tmp_path)
    good = load(run / "ckpt" / "last.pt")
    weights = {k: v * math.nan if v.is_floating_point() else v for k, v in good["model_state_dict"].items()}
    torch.save({"tensor": torch.zeros(3),
                "no_optimizer": {k: v for k, v in good.items() if k != "optimizer_state_dict"},
                "nan_weights": {**good, "model_state_dict": weights}}[case], run / "ckpt" / "last.pt")
    before = snapshot(run)
    assert train.main(parse(index_csv, run, "--num_epochs", "2")) == 2
    assert {"tensor": "not a train.py checkpoint (a Tensor", "no_optimizer": "missing optimizer_state_dict",
            "nan_weights": "non-finite weights in"}[case] in one_error_line(capsys)
    assert snapshot(run) == before


# 9. a damaged training log
def test_damaged_training_log_is_moved_aside_and_rebuilt(one_epoch, index_csv, tmp_path, capsys):
    run = copy_of(one_epoch, tmp_path)
    damaged = '[{"epoch": 1, "tot'
    (run / "logs" / "training_log.json").write_text(damaged)
    assert train.main(parse(index_csv, run, "--num_epochs", "2")) == 0
    err = capsys.readouterr().err
    assert "training_log.json was unreadable (JSONDecodeError); moved to training_log.json.bad" in err
    assert [e["epoch"] for e in json.loads((run / "logs" / "training_log.json").read_text())] == [1, 2]
    assert (run / "logs" / "training_log.json.bad").read_text() == damaged


# 10. stop signals during setup and validation
def test_sigterm_while_the_dataset_is_prepared_exits_85_with_a_line(tmp_path):
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.random.default_rng(0).integers(0, 255, (512, 512), np.uint8))
    rows = []
    for e in range(12):  # 12 wells of 120 hard-linked 512-px frames: a few seconds of decoding into the cache
        folder = tmp_path / "wells" / f"AA{e}-1"
        folder.mkdir(parents=True)
        for k in range(120):
            os.link(frame, folder / f"x_RUN{k + 1}.png")
        rows.append({"path": f"wells/AA{e}-1"})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    cmd = [sys.executable, str(REPO / "train.py"), "--index_csv", str(tmp_path / "index.csv"), "--save_dir",
           str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"), "--cache_dir", str(tmp_path / "cache"),
           "--image_size", "32", "--encoder_hidden_dim", "8", "--decoder_hidden_dim", "8", "--seq_len", "4",
           "--device", "cpu", "--num_workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*.npy")):  # the handlers are in place: decoding has begun
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 85, stderr
    assert stdout.strip() == f"SIGTERM while the sources of {tmp_path / 'index.csv'} were checked: nothing to save " \
                             f"yet (the frame cache keeps what was decoded); exit 85"
    assert stderr == "" and not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()
    assert len(list((tmp_path / "cache").glob("*.npy"))) < 12


def test_stop_signal_during_validation_saves_the_trained_epoch(index_csv, tmp_path, capsys, monkeypatch):
    class SignalInValidation(AutoencoderLoss):
        sent = False

        def forward(self, output, batch):
            if not torch.is_grad_enabled() and not SignalInValidation.sent:
                SignalInValidation.sent = True
                signal.raise_signal(signal.SIGUSR1)
            return super().forward(output, batch)

    monkeypatch.setattr(train, "AutoencoderLoss", SignalInValidation)
    args = parse(index_csv, tmp_path, "--num_epochs", "1", "--batch_size", "1")  # 2 val clips: 2 batches
    assert train.main(args) == 85
    assert "SIGUSR1: saved" in capsys.readouterr().out
    last = load(tmp_path / "ckpt" / "last.pt")
    assert last["epoch"] == 0 and last["partial_epoch"]["step"] == 6 and last["global_step"] == 6
    assert not (tmp_path / "logs" / "training_log.json").exists()
    monkeypatch.setattr(train, "AutoencoderLoss", AutoencoderLoss)
    assert train.main(args) == 0  # validation runs again, no training step
    assert load(tmp_path / "ckpt" / "last.pt")["global_step"] == 6
    assert [e["epoch"] for e in json.loads((tmp_path / "logs" / "training_log.json").read_text())] == [1]


# --keep_checkpoints
@pytest.mark.parametrize("keep,kept", [(2, [2, 3]), (0, [])])
def test_keep_checkpoints_deletes_only_after_the_new_one_is_written(keep, kept, index_csv, tmp_path, monkeypatch):
    seen, prune = [], ckpt.prune_checkpoints

    def spy(save_dir, k):
        seen.append(sorted(p.name for p in Path(save_dir).glob("checkpoint_epoch_*.pt")))
        prune(save_dir, k)

    monkeypatch.setattr(ckpt, "prune_checkpoints", spy)
    args = parse(index_csv, tmp_path, "--num_epochs", "3", "--save_every", "1", "--keep_checkpoints", str(keep))
    assert train.main(args) == 0
    assert sorted(int(p.stem.rsplit("_", 1)[1]) for p in (tmp_path / "ckpt").glob("checkpoint_epoch_*.pt")) == kept
    if keep:
        assert seen[-1] == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_3.pt"][-keep - 1:]


# issue 22: Ctrl-C saves like SIGTERM (exit 130); a second one ends at once
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_saves_like_sigterm_and_a_second_one_ends_at_once(presses, index_csv, tmp_path, capsys, monkeypatch):
    class CtrlCInFirstStep(AutoencoderLoss):
        sent = False

        def forward(self, output, batch):
            if torch.is_grad_enabled() and not CtrlCInFirstStep.sent:
                CtrlCInFirstStep.sent = True
                for _ in range(presses):
                    signal.raise_signal(signal.SIGINT)
            return super().forward(output, batch)

    monkeypatch.setattr(train, "AutoencoderLoss", CtrlCInFirstStep)
    handler = signal.getsignal(signal.SIGINT)
    assert train.main(parse(index_csv, tmp_path, "--num_epochs", "1")) == 130
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    last = load(tmp_path / "ckpt" / "last.pt")
    if presses == 1:  # the step finishes, last.pt keeps the position
        assert f"SIGINT: saved {tmp_path / 'ckpt' / 'last.pt'} at epoch 1, step 1; exit 130" in capsys.readouterr().out
        assert last["partial_epoch"]["step"] == 1
    else:  # at once: the files on disk are those written before (the initial last.pt)
        assert one_error_line(capsys) == "train.py: SIGINT again: stopped at once; exit 130"
        assert last["epoch"] == 0 and last["partial_epoch"] is None and last["global_step"] == 0
