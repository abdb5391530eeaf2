"""Issue 14, full-size runs: K training clips per recording and epoch, and extraction's output-size estimate
with its refusal when the output would not fit."""

import collections
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import extract_latents
import train
from cli import CLIPS_DIR, TRAJECTORY_DIR, InputError, run_main
from dataset_ivf import SAMPLINGS, DataConfig, IVFSequenceDataset, ResumableSampler
from frames_io import list_frames
from make_synthetic_data import make_synthetic_dataset
from model import ConvLSTMAutoencoder, ModelConfig

K, T = 5, 4


@pytest.fixture(scope="module")
def wells(tmp_path_factory) -> Path:
    """6 synthetic wells of 60 frames at 32 px: every uniform segment (15 frames) and the 57 window starts
    leave room for K distinct clips."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("wells"), n_embryos=6, n_frames=60, size=32, seed=3)


def clips_by_recording(ds: IVFSequenceDataset, epoch: int) -> dict[str, list[tuple]]:
    ds.set_epoch(epoch)
    by = collections.defaultdict(list)
    for i in range(len(ds)):
        item = ds[i]
        by[item["cell_id"]].append(tuple(item["frame_indices"].tolist()))
    return by


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_an_epoch_draws_k_distinct_clips_from_every_recording(wells, sampling):
    ds = IVFSequenceDataset(wells, seq_len=T, image_size=16, sampling=sampling, training=True, clips_per_recording=K)
    assert ds.clips_per_row == K and len(ds) == K * len(ds.rows) == 30
    sampler = ResumableSampler(ds, world_size=1, rank=0, seed=0)  # train.py's epoch order
    sampler.set_epoch(1)
    assert collections.Counter(i // K for i in sampler) == {r: K for r in range(len(ds.rows))}
    epochs = [clips_by_recording(ds, epoch) for epoch in (1, 2)]
    for by in epochs:
        assert sorted(by) == sorted(r.cell_id for r in ds.rows)
        for cell, clips in by.items():
            assert len(clips) == K and len(set(clips)) == K, (cell, clips)
            if sampling == "window":
                assert all(np.array_equal(c, np.arange(c[0], c[0] + T)) for c in clips)
            elif sampling == "span":  # a stretch of random length and place each, its frames in order
                assert all(np.all(np.diff(c) > 0) for c in clips) and len({c[-1] - c[0] for c in clips}) > 1, clips
            else:  # stratified: each of the T segments gives the K clips K different frames
                assert all(len({c[j] for c in clips}) == K for j in range(T)), clips
                assert all(np.all(np.diff(c) > 0) for c in clips)
    assert epochs[0] != epochs[1]


def test_clips_depend_only_on_seed_epoch_and_index(wells):
    kw = dict(seq_len=T, image_size=16, training=True, clips_per_recording=K, augment=True, seed=7)
    a, b = IVFSequenceDataset(wells, **kw), IVFSequenceDataset(wells, **kw)
    a.set_epoch(3)
    b.set_epoch(3)
    for i in (17, 2, 29, 2, 0):  # any order, repeats: the same clip
        assert torch.equal(a[i]["video"], b[i]["video"]) and torch.equal(a[i]["frame_indices"], b[i]["frame_indices"])
    first = clips_by_recording(a, 3)
    assert clips_by_recording(b, 3) == first
    assert clips_by_recording(b, 4) != first
    assert clips_by_recording(IVFSequenceDataset(wells, **{**kw, "seed": 8}), 3) != first
    a.set_epoch(3)
    videos = [a[i]["video"] for i in range(K)]  # the K clips of row 0: each its own augmentation too
    assert all(not torch.equal(videos[0], v) for v in videos[1:])


def test_one_clip_per_recording_keeps_the_single_clip_draw(wells):
    """K = 1 draws exactly what the one-clip-per-row sampling drew, so earlier runs and the demo are unchanged."""
    ds = IVFSequenceDataset(wells, seq_len=T, image_size=16, training=True, clips_per_recording=1, seed=7)
    ds.set_epoch(2)
    assert len(ds) == len(ds.rows)
    for i in range(len(ds)):
        n, rng = ds.num_frames(i), np.random.default_rng([7, 2, i])
        edges = np.linspace(0, n, T + 1)
        lo = np.floor(edges[:-1])
        hi = np.maximum(lo + 1, np.floor(edges[1:]))
        expected = np.minimum(lo + np.floor(rng.random(T) * (hi - lo)), n - 1).astype(np.int64)
        assert ds[i]["frame_indices"].tolist() == expected.tolist()


def test_validation_extraction_and_clip_rows_keep_one_clip_per_row(wells, tmp_path):
    val = IVFSequenceDataset(wells, seq_len=T, image_size=16, split="val", clips_per_recording=K)
    evaluation = IVFSequenceDataset(wells, seq_len=T, image_size=16, training=False, clips_per_recording=K)
    for ds in (val, evaluation):
        assert not ds.training and ds.clips_per_row == 1 and len(ds) == len(ds.rows)
        ds.set_epoch(1)
        first = ds[0]["frame_indices"]
        ds.set_epoch(2)
        assert torch.equal(ds[0]["frame_indices"], first)  # deterministic
    folder = wells.parent / pd.read_csv(wells)["path"][0]
    names = [p.relative_to(wells.parent).as_posix() for p in list_frames(folder)]
    rows = [{"cell_id": "AA1-1", "start_idx": s, "paths": "|".join(names[s:s + T])} for s in (0, 10, 20)]
    pd.DataFrame(rows).to_csv(wells.parent / "clip_rows.csv", index=False)
    clip_rows = IVFSequenceDataset(wells.parent / "clip_rows.csv", seq_len=T, image_size=16, training=True,
                                   clips_per_recording=K)
    assert clip_rows.clips_per_row == 1 and len(clip_rows) == 3
    with pytest.raises(InputError, match=r"--clips_per_recording must be in \[1, 1000\], got 0"):
        DataConfig(clips_per_recording=0)


TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--warmup_epochs", "1"]


def test_run_plan_is_printed_and_a_rerun_keeps_the_epoch_length(index_csv, tmp_path, capsys):
    def run(*extra):
        return train.main(train.get_args_parser().parse_args(
            ["--index_csv", str(index_csv), "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"),
             *TINY, *extra]))

    assert run("--num_epochs", "1", "--clips_per_recording", "2", "--warmup_epochs", "0.5") == 0
    out = capsys.readouterr().out
    assert ("Run plan: 6 training recordings x 2 clips = 12 clips an epoch, 6 steps an epoch (batch 2); 1 epochs = "
            "6 steps, warm-up 3 steps; validation 2 clips (one per recording); 0 loader workers\n") in out
    split = pd.read_csv(tmp_path / "logs" / "split.csv")
    assert len(split) == 8 and split["cell_id"].is_unique  # one row per recording, not per clip
    checkpoint = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert checkpoint["data_config"]["clips_per_recording"] == 2 and checkpoint["global_step"] == 6
    assert run("--num_epochs", "2", "--clips_per_recording", "3", "--warmup_epochs", "0.5") == 2  # refused
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pass --clips_per_recording 2 to continue" in err
    assert run("--num_epochs", "2", "--clips_per_recording", "2", "--warmup_epochs", "0.5") == 0
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["global_step"] == 12
    assert "warm-up 3 steps" in capsys.readouterr().out
    assert run("--num_epochs", "1", "--clips_per_recording", "0", "--save_dir", str(tmp_path / "other")) == 2


# ---- extraction: the output-size estimate -------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model saved the way train.py saves one (the sizes are what matters here)."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, cnn_channels=(4, 8, 8), encoder_hidden_dim=16, encoder_layers=1,
                         decoder_hidden_dim=8, decoder_layers=1, classifier_hidden=(16, 8))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model_state_dict": ConvLSTMAutoencoder(config).state_dict(), "model_config": asdict(config),
                "data_config": DataConfig(seq_len=8, image_size=32, seed=0).to_dict(), "epoch": 1}, path)
    return path


def extract_args(checkpoint, wells, out, *extra):
    return extract_latents.get_args_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out", str(out), "--device", "cpu",
         "--num_workers", "0", "--annotations_dir", str(wells.parent / "annotations"), *extra])


@pytest.mark.parametrize("flags", [("--mode", "clips"), ("--mode", "clips", "--save_z_seq"),
                                   ("--mode", "trajectory"), ("--mode", "trajectory", "--save_z_seq"),
                                   ("--mode", "trajectory", "--no_controls", "--frame_step", "3")])
def test_size_estimate_matches_the_bytes_written(checkpoint, wells, tmp_path, capsys, flags):
    args = extract_args(checkpoint, wells, tmp_path / "latents", *flags)
    model, ckpt = extract_latents.load_model(str(checkpoint))
    extract_latents.check_args(args)  # trajectory mode's defaults
    estimate = extract_latents.estimate_output_bytes(extract_latents.build_dataset(args, ckpt, 32), model.config,
                                                     args)
    extract_latents.main(args)
    folder = tmp_path / "latents" / (CLIPS_DIR if args.mode == "clips" else TRAJECTORY_DIR)
    written = sum(p.stat().st_size for p in folder.iterdir())
    assert abs(estimate - written) <= 0.1 * written, (estimate, written)
    assert f"about {extract_latents._size(estimate)} to write into {folder}" in capsys.readouterr().out


def test_output_larger_than_the_free_space_is_refused(checkpoint, wells, tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    seen = []

    def small_disk(path):
        seen.append(Path(path))
        return real(path)._replace(free=50_000)

    monkeypatch.setattr(shutil, "disk_usage", small_disk)
    out = tmp_path / "not" / "yet" / "latents"
    args = extract_args(checkpoint, wells, out, "--mode", "trajectory", "--save_z_seq")
    assert run_main("extract_latents.py", extract_latents.run, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "estimated at" in err and "50.0 KB free" in err and str(tmp_path) in err and "--save_z_seq" in err
    assert seen == [tmp_path]  # the nearest folder that exists
    assert not (tmp_path / "not").exists()  # nothing written
    small = extract_args(checkpoint, wells, out, "--mode", "clips")  # a smaller output fits
    assert run_main("extract_latents.py", extract_latents.run, small) == 0
