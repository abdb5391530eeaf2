"""dataset_ivf.py: sources, natural sort, sampling, normalisation, augmentation, cache, annotations, loading."""
import os

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import frames_io
from cli import MAX_GPU_WORKERS, InputError, OneLineParser, resolve_num_workers
from dataset_ivf import DataConfig, IVFSequenceDataset, add_data_args
from frames_io import PHASES, list_frames, natural_key
from make_synthetic_data import make_synthetic_dataset


def gray_frames(n, size=32, step=20):
    """n flat frames with value step * (k + 1), a bright marker in the top-left corner."""
    frames = []
    for k in range(n):
        f = np.full((size, size), step * (k + 1), np.uint8)
        f[:4, :4] = 255
        frames.append(f)
    return frames


def write_folder(folder, frames, ext="jpeg", prefix="D2013_WELL1_RUN"):
    folder.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{prefix}{k + 1}.{ext}"), f)
    return folder


def write_video(path, frames, fourcc="MJPG", color=False):
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5.0, (w, h), isColor=color)
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if color else f)
    writer.release()
    return path


def write_index(tmp_path, rows, name="index.csv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def centre_values(item):
    """Mean of each frame's centre (0-255 scale) for normalize='none'."""
    return (item["video"][:, 0, 12:20, 12:20].mean(dim=(1, 2)) * 255).numpy()


def test_natural_sort_and_duplicate_f0_ignored(tmp_path):
    frames = gray_frames(12)
    folder = write_folder(tmp_path / "AA83-1", frames)
    write_folder(folder / "F0", [np.zeros((32, 32), np.uint8)] * 3)  # duplicate subfolder, other content
    assert [p.name for p in list_frames(folder)][:3] == ["D2013_WELL1_RUN1.jpeg", "D2013_WELL1_RUN2.jpeg",
                                                          "D2013_WELL1_RUN3.jpeg"]
    assert sorted(["RUN10", "RUN2", "RUN1"], key=natural_key) == ["RUN1", "RUN2", "RUN10"]
    index = write_index(tmp_path, [{"path": "AA83-1", "label": 1}])
    ds = IVFSequenceDataset(index, seq_len=12, image_size=32, sampling="window", normalize="none")
    item = ds[0]
    assert ds.num_frames(0) == 12
    assert item["frame_indices"].tolist() == list(range(12))
    assert np.allclose(centre_values(item), [20 * (k + 1) for k in range(12)], atol=2)


@pytest.mark.parametrize("ext", ["jpeg", "jpg", "png", "bmp", "tif"])
def test_frame_folder_formats(tmp_path, ext):
    write_folder(tmp_path / "e1", gray_frames(6), ext=ext)
    index = write_index(tmp_path, [{"path": "e1"}])
    ds = IVFSequenceDataset(index, seq_len=6, image_size=16, sampling="window", normalize="none")
    item = ds[0]
    assert item["video"].shape == (6, 1, 16, 16) and item["video"].dtype == torch.float32
    assert item["label"] == -1 and item["cell_id"] == "e1"
    assert np.allclose(item["video"][:, 0, 6:10, 6:10].mean(dim=(1, 2)).numpy() * 255,
                       [20 * (k + 1) for k in range(6)], atol=2)


@pytest.mark.parametrize("ext,fourcc,color", [("avi", "MJPG", False), ("avi", "MJPG", True),
                                              ("mp4", "mp4v", True), ("mkv", "MJPG", True),
                                              ("mov", "mp4v", False)])
def test_video_formats(tmp_path, ext, fourcc, color):
    write_video(tmp_path / f"AB12-3.{ext}", gray_frames(9), fourcc, color)
    index = write_index(tmp_path, [{"path": f"AB12-3.{ext}", "label": 0}])
    for cache_dir in (None, tmp_path / "cache"):
        ds = IVFSequenceDataset(index, seq_len=9, image_size=32, sampling="window", normalize="none",
                                cache_dir=cache_dir)
        item = ds[0]
        assert ds.num_frames(0) == 9 and item["cell_id"] == "AB12-3" and item["label"] == 0
        assert item["video"].shape == (9, 1, 32, 32)
        assert np.allclose(centre_values(item), [20 * (k + 1) for k in range(9)], atol=6)


@pytest.mark.parametrize("cache", [False, True])
def test_multipage_tiff_8_and_16_bit(tmp_path, cache):
    pages8 = gray_frames(5)
    assert cv2.imwritemulti(str(tmp_path / "s8.tif"), pages8)
    assert cv2.imwritemulti(str(tmp_path / "s16.tiff"), [p.astype(np.uint16) * 257 for p in pages8])
    twelve_bit = [np.full((32, 32), 4095 * (k + 1) // 5, np.uint16) for k in range(5)]
    assert cv2.imwritemulti(str(tmp_path / "s12.tif"), twelve_bit)
    index = write_index(tmp_path, [{"path": "s8.tif"}, {"path": "s16.tiff"}, {"path": "s12.tif"}])
    ds = IVFSequenceDataset(index, seq_len=5, image_size=32, sampling="window", normalize="none",
                            cache_dir=tmp_path / "c" if cache else None)
    v8, v16, v12 = ds[0]["video"], ds[1]["video"], ds[2]["video"]
    assert torch.allclose(v8, v16, atol=1e-4)  # same picture at both depths
    assert np.allclose(v12[:, 0, 16, 16].numpy(), [4095 * (k + 1) // 5 / 65535 for k in range(5)], atol=1e-4)
    minmax = IVFSequenceDataset(index, seq_len=5, image_size=32, sampling="window")
    assert minmax[2]["video"].max() == 1.0 and minmax[2]["video"].min() == 0.0


def test_non_square_frames_are_centre_cropped(tmp_path):
    frame = np.zeros((40, 60), np.uint8)
    frame[:, 10:50] = 200  # the central 40x40 square
    write_folder(tmp_path / "w", [frame] * 3, ext="png")
    ds = IVFSequenceDataset(write_index(tmp_path, [{"path": "w"}]), seq_len=3, image_size=20, normalize="none")
    assert torch.allclose(ds[0]["video"], torch.full((3, 1, 20, 20), 200 / 255))


def test_sampling_uniform_window_and_short_sources(tmp_path):
    write_folder(tmp_path / "long", gray_frames(30, step=8), ext="png")
    write_folder(tmp_path / "short", gray_frames(4), ext="png")
    index = write_index(tmp_path, [{"path": "long"}, {"path": "short"}])
    ev = IVFSequenceDataset(index, seq_len=8, image_size=16)
    idx = ev[0]["frame_indices"].numpy()
    assert idx[0] == 0 and idx[-1] == 29 and np.all(np.diff(idx) > 0)
    assert torch.equal(ev[0]["video"], ev[0]["video"])  # eval is deterministic
    assert sorted(set(ev[1]["frame_indices"].tolist())) == [0, 1, 2, 3]  # short source repeats frames
    assert ev[1]["video"].shape == (8, 1, 16, 16)
    tr = IVFSequenceDataset(index, seq_len=8, image_size=16, training=True, seed=1)
    draws = []
    for epoch in range(3):
        tr.set_epoch(epoch)
        a, b = tr[0]["frame_indices"].numpy(), tr[0]["frame_indices"].numpy()
        assert np.array_equal(a, b)  # a pure function of (seed, epoch, index)
        assert np.all(np.diff(a) > 0) and a.max() <= 29
        draws.append(a)
    assert not all(np.array_equal(draws[0], d) for d in draws[1:])
    win = IVFSequenceDataset(index, seq_len=8, image_size=16, sampling="window", training=True)
    starts = set()
    for epoch in range(5):
        win.set_epoch(epoch)
        w = win[0]["frame_indices"].numpy()
        assert np.array_equal(w, np.arange(w[0], w[0] + 8))
        starts.add(int(w[0]))
    assert len(starts) > 1
    assert win[1]["frame_indices"].shape == (8,)
    centre = IVFSequenceDataset(index, seq_len=8, image_size=16, sampling="window")
    assert centre[0]["frame_indices"].tolist() == list(range(11, 19))


def test_span_sampling_draws_clips_over_stretches_of_every_length(tmp_path):
    """--sampling span: in training a clip spreads over a random stretch (from seq_len frames to the whole
    recording), each of a row's K clips its own; in eval it is the uniform clip."""
    write_folder(tmp_path / "long", gray_frames(120, step=2), ext="png")
    index = write_index(tmp_path, [{"path": "long"}])
    uniform = IVFSequenceDataset(index, seq_len=6, image_size=16)[0]["frame_indices"]
    assert torch.equal(IVFSequenceDataset(index, seq_len=6, image_size=16, sampling="span")[0]["frame_indices"],
                       uniform)
    span = IVFSequenceDataset(index, seq_len=6, image_size=16, sampling="span", training=True, seed=3,
                              clips_per_recording=4)
    stretches = []
    for epoch in range(10):
        span.set_epoch(epoch)
        for k in range(4):
            idx = span[k]["frame_indices"].numpy()
            assert np.all(np.diff(idx) > 0) and 0 <= idx[0] and idx[-1] < 120
            assert np.array_equal(idx, span[k]["frame_indices"].numpy())  # a function of (seed, epoch, item)
            stretches.append(idx[-1] - idx[0])
    assert min(stretches) < 30 and max(stretches) > 90  # short and long stretches alike
    assert (span[0]["recording_frames"], span[0]["frame_indices"].shape) == (120, (6,))


def test_two_views_are_the_same_frames_as_another_well_records_them(tmp_path):
    frame = np.full((32, 32), 60, np.uint8)
    frame[4:12, 4:20] = 220  # asymmetric bar
    write_folder(tmp_path / "a", [frame] * 5, ext="png")
    index = write_index(tmp_path, [{"path": "a"}])
    assert "view" not in IVFSequenceDataset(index, seq_len=5, image_size=32, two_views=True)[0]  # training only
    views = IVFSequenceDataset(index, seq_len=5, image_size=32, two_views=True, training=True, seed=2)
    differs = []
    for epoch in range(4):
        views.set_epoch(epoch)
        item = views[0]
        v = item["view"]
        assert v.shape == item["video"].shape and v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1
        assert torch.allclose(v, v[:1].expand_as(v))  # one nuisance for the whole clip
        assert torch.equal(v, views[0]["view"])  # a function of (seed, epoch, item)
        differs.append((v - item["video"]).abs().mean().item())
    assert min(differs) > 0.02 and len(set(differs)) == 4


def test_normalisations(tmp_path):
    rng = np.random.default_rng(0)
    write_folder(tmp_path / "n", [rng.integers(40, 200, (32, 32), dtype=np.uint8) for _ in range(4)], ext="png")
    index = write_index(tmp_path, [{"path": "n"}])
    mm = IVFSequenceDataset(index, seq_len=4, image_size=32)[0]["video"]
    assert mm.min() == 0 and mm.max() == 1
    assert 0.005 < (mm == 0).float().mean() < 0.03 and 0.005 < (mm == 1).float().mean() < 0.03
    raw = IVFSequenceDataset(index, seq_len=4, image_size=32, normalize="none")[0]["video"]
    assert 40 / 255 - 1e-6 <= raw.min() and raw.max() <= 200 / 255 + 1e-6
    z = IVFSequenceDataset(index, seq_len=4, image_size=32, normalize="zscore")[0]["video"]
    assert 0 <= z.min() and z.max() <= 1 and abs(z.mean().item() - 0.5) < 0.02


def test_augment_same_for_all_frames_and_training_only(tmp_path):
    frame = np.full((32, 32), 60, np.uint8)
    frame[4:12, 4:20] = 220  # asymmetric bar
    write_folder(tmp_path / "a", [frame] * 5, ext="png")
    index = write_index(tmp_path, [{"path": "a"}])
    plain = IVFSequenceDataset(index, seq_len=5, image_size=32)[0]["video"]
    assert torch.equal(IVFSequenceDataset(index, seq_len=5, image_size=32, augment=True)[0]["video"], plain)
    aug = IVFSequenceDataset(index, seq_len=5, image_size=32, augment=True, training=True)
    changed = 0
    for epoch in range(4):
        aug.set_epoch(epoch)
        v = aug[0]["video"]
        assert v.min() >= 0 and v.max() <= 1
        assert torch.allclose(v, v[:1].expand_as(v))  # one transform for the whole clip
        changed += not torch.allclose(v, plain, atol=0.05)
    assert changed >= 3


def _count_decodes(monkeypatch):
    counts = {"imdecode": 0, "VideoCapture": 0, "imreadmulti": 0}
    for name in counts:
        real = getattr(cv2, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(frames_io.cv2, name, wrapper)
    return counts


def test_cache_second_epoch_opens_no_source(tmp_path, monkeypatch):
    write_folder(tmp_path / "f", gray_frames(10), ext="jpeg")
    write_video(tmp_path / "v.avi", gray_frames(10))
    assert cv2.imwritemulti(str(tmp_path / "t.tif"), gray_frames(10))
    index = write_index(tmp_path, [{"path": "f"}, {"path": "v.avi"}, {"path": "t.tif"}])
    counts = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    ds = IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir=cache, training=True, augment=True)
    assert counts == {"imdecode": 10, "VideoCapture": 1, "imreadmulti": 1}  # each source decoded once
    assert len(list(cache.glob("*.npy"))) == 3 and not list(cache.glob(".*"))  # no temp files left
    first = {}
    for epoch in range(2):
        for k in counts:
            counts[k] = 0
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=2, num_workers=0):
            first.setdefault(epoch, batch["video"])
        assert counts == {"imdecode": 0, "VideoCapture": 0, "imreadmulti": 0}
    IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir=cache)  # a new dataset reuses the cache
    assert counts == {"imdecode": 0, "VideoCapture": 0, "imreadmulti": 0}
    IVFSequenceDataset(index, seq_len=4, image_size=32, cache_dir=cache)  # another size: decoded again
    assert counts == {"imdecode": 10, "VideoCapture": 1, "imreadmulti": 1}
    counts["imdecode"] = 0
    cv2.imwrite(str(tmp_path / "f" / "D2013_WELL1_RUN3.jpeg"), np.zeros((40, 40), np.uint8))  # changed file
    changed = IVFSequenceDataset(index, seq_len=10, image_size=16, cache_dir=cache, sampling="window",
                                 normalize="none")
    assert counts["imdecode"] == 10 and counts["VideoCapture"] == 1
    assert changed[0]["video"][2].max() == 0


def test_auto_cache_beside_index_and_off(tmp_path, monkeypatch):
    write_folder(tmp_path / "f", gray_frames(6), ext="jpeg")
    index = write_index(tmp_path, [{"path": "f"}])
    counts = _count_decodes(monkeypatch)
    IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir="auto")
    assert len(list((tmp_path / ".ivf_cache").glob("*.npy"))) == 1
    counts["imdecode"] = 0
    IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir="auto")  # reused: nothing decoded
    assert counts["imdecode"] == 0
    off = IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir="off")
    assert off.store.cache_dir is None


def test_unwritable_cache_is_one_clear_error(tmp_path):
    write_folder(tmp_path / "f", gray_frames(6), ext="jpeg")
    index = write_index(tmp_path, [{"path": "f"}])
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(InputError, match=r"cannot write the frame cache in .*a_file.*--cache_dir"):
        IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir=tmp_path / "a_file" / "cache")


def test_cache_matches_uncached(tmp_path):
    index = make_synthetic_dataset(tmp_path / "syn", n_embryos=3, n_frames=9, size=48, seed=2)
    kw = dict(seq_len=5, image_size=32, training=True, augment=True, seed=4)
    a = IVFSequenceDataset(index, **kw)
    b = IVFSequenceDataset(index, cache_dir=tmp_path / "cache", **kw)
    for i in range(len(a)):
        assert torch.equal(a[i]["video"], b[i]["video"])
        assert torch.equal(a[i]["frame_indices"], b[i]["frame_indices"])


def test_overlapping_clip_rows_share_one_decode(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "AA1-1", gray_frames(12), ext="jpeg")
    names = [p.name for p in list_frames(folder)]
    rows = [{"cell_id": "AA1-1", "start_idx": s, "paths": "|".join(f"AA1-1/{n}" for n in names[s:s + 6])}
            for s in (0, 3, 6)]
    index = write_index(tmp_path, rows)
    counts = _count_decodes(monkeypatch)
    ds = IVFSequenceDataset(index, seq_len=6, image_size=16, cache_dir=tmp_path / "cache", normalize="none")
    assert counts["imdecode"] == 12 and len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert ds[1]["frame_indices"].tolist() == list(range(3, 9))
    assert np.allclose(ds[1]["video"][:, 0, 8, 8].numpy() * 255, [20 * (k + 1) for k in range(3, 9)], atol=2)
    assert ds.metadata(2)["start_idx"] == 6.0


def test_annotations_give_phase_and_hours_per_frame(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=4, n_frames=12, size=32, seed=7)
    ann = tmp_path / "annotations"
    ds = IVFSequenceDataset(index, seq_len=6, image_size=32, annotations_dir=ann, training=True)
    table = pd.read_csv(index)
    for i in range(len(ds)):
        item = ds[i]
        embryo = item["cell_id"]
        runs = item["frame_indices"].numpy() + 1  # synthetic RUN numbers start at 1
        expected = [""] * 6
        phases_file = ann / f"{embryo}_phases.csv"
        if phases_file.exists():
            for phase, first, last in pd.read_csv(phases_file, header=None).itertuples(index=False):
                expected = [phase if first <= r <= last else e for r, e in zip(runs, expected, strict=True)]
        assert item["phase"] == expected
        assert item["phase_index"].tolist() == [PHASES.index(p) if p else -1 for p in expected]
        times = pd.read_csv(ann / f"{embryo}_timeElapsed.csv").set_index("frame_index")["time"]
        assert np.allclose(item["hours"].numpy(), times.loc[runs].to_numpy(), atol=1e-4)
        label = int(table.set_index("embryo_id").loc[embryo, "label"])
        assert item["label"] == label and (any(expected) == (label == 1))


def test_annotations_from_handmade_files_by_run_number(tmp_path):
    frames = gray_frames(10)
    write_folder(tmp_path / "AA83-7", frames, prefix="D2013.01.28_S0717_I132_WELL7_RUN")
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "AA83-7_phases.csv").write_text("tPB2,2,3\ntPNa,4,6\nt2,8,10\n")
    (ann / "AA83-7_timeElapsed.csv").write_text("frame_index,time\n" + "".join(f"{k},{k / 4}\n" for k in range(1, 11)))
    index = write_index(tmp_path, [{"path": "AA83-7", "embryo_id": "AA83-7", "label": 1}])
    ds = IVFSequenceDataset(index, seq_len=10, image_size=16, sampling="window", annotations_dir=ann)
    item = ds[0]
    expected = ["", "tPB2", "tPB2", "tPNa", "tPNa", "tPNa", "", "t2", "t2", "t2"]
    assert item["phase"] == expected
    assert np.allclose(item["hours"].numpy(), np.arange(1, 11) / 4)
    hours, phase = ds.annotations(0, [0, 9])
    assert phase.tolist() == ["", "t2"] and np.allclose(hours, [0.25, 2.5])
    assert ds.annotations(0)[1].tolist() == expected
    hours, phase = IVFSequenceDataset(index, seq_len=10, image_size=16).annotations(0, [1, 2])
    assert np.isnan(hours).all() and phase.tolist() == ["", ""]


def test_dataloader_two_workers_default_collate(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=6, n_frames=12, size=64, seed=0)
    ds = IVFSequenceDataset(index, seq_len=4, image_size=32, cache_dir=tmp_path / "cache", split="train",
                            augment=True, annotations_dir=tmp_path / "annotations")
    ds.set_epoch(3)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    serial = list(DataLoader(ds, batch_size=2, num_workers=0))
    assert len(batches) == len(serial) > 0
    for b, s in zip(batches, serial, strict=True):
        assert b["video"].shape[1:] == (4, 1, 32, 32) and b["video"].dtype == torch.float32
        assert b["label"].dtype == torch.int64 and b["frame_indices"].dtype == torch.int64
        assert b["hours"].shape == b["frame_indices"].shape and len(b["phase"]) == 4
        assert torch.equal(b["video"], s["video"])  # workers give the same clips as the main process
        assert b["cell_id"] == s["cell_id"]


def test_persistent_workers_see_set_epoch(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=2, n_frames=30, size=32, seed=0)
    ds = IVFSequenceDataset(index, seq_len=4, image_size=32, training=True)
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader))["frame_indices"])
        ds.set_epoch(epoch)
        assert torch.equal(seen[-1], torch.stack([ds[0]["frame_indices"], ds[1]["frame_indices"]]))
    assert not torch.equal(seen[0], seen[1])


def test_load_frames_num_frames_metadata(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=3, n_frames=7, size=32, seed=1)
    ds = IVFSequenceDataset(index, seq_len=4, image_size=16, cache_dir=tmp_path / "c")
    assert ds.num_frames(0) == 7
    whole = ds.load_frames(0)
    assert whole.shape == (7, 1, 16, 16) and whole.dtype == np.float32 and whole.min() >= 0 and whole.max() <= 1
    assert ds.load_frames(0, [1, 5]).shape == (2, 1, 16, 16)
    with pytest.raises(IndexError):
        ds.load_frames(0, [7])
    meta = ds.metadata(0)
    row = pd.read_csv(index).iloc[0]
    assert meta["embryo_id"] == row["embryo_id"] and meta["patient_id"] == row["patient_id"]
    assert meta["path"] == row["path"] and meta["n_frames"] == 7.0 and meta["label"] == row["label"]


def test_data_flags_default_to_data_config():
    import argparse
    args = add_data_args(argparse.ArgumentParser()).parse_args([])
    args.image_size, args.seed = DataConfig().image_size, DataConfig().seed
    assert DataConfig.from_args(args) == DataConfig()
    assert (args.index_csv, args.seq_len, args.sampling, args.normalize) == ("index.csv", 20, "uniform", "percentile")
    assert (args.augment, args.cache_dir, args.skip_bad, args.annotations_dir) == (False, "auto", False, None)
    assert args.val_fraction == 0.2 and args.num_workers == "auto"


def test_num_workers_takes_auto_or_a_count_and_nothing_else(capsys):
    parser = add_data_args(OneLineParser(prog="train.py"))
    assert parser.parse_args(["--num_workers", "auto"]).num_workers == "auto"
    assert parser.parse_args(["--num_workers", "0"]).num_workers == 0
    assert parser.parse_args(["--num_workers", "12"]).num_workers == 12
    for bad in ("-1", "two", "1.5", ""):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["--num_workers", bad])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and "--num_workers" in err, err


def test_auto_workers_follow_the_device_the_cores_and_the_processes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)

    def cores(n):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)

    cores(12)
    assert resolve_num_workers("auto", "cpu") == 2  # the CPU step uses the cores itself
    assert resolve_num_workers("auto", "cuda") == 11  # every core but the training process's own
    assert resolve_num_workers("auto", "cuda", processes=4) == 2  # 3 cores for each of 4 processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this machine
    assert resolve_num_workers("auto", "cuda") == 5
    cores(128)
    assert resolve_num_workers("auto", "cuda", processes=1) == MAX_GPU_WORKERS
    cores(1)
    assert resolve_num_workers("auto", "cpu") == 1 and resolve_num_workers("auto", "cuda") == 1
    assert resolve_num_workers(0, "cuda") == 0 and resolve_num_workers(7, "cpu") == 7  # a number as given


def test_old_normalize_name_and_checkpoints_without_data_config():
    assert DataConfig(normalize="minmax01").normalize == "percentile"
    old = {"args": {"seq_len": 12, "normalize": "minmax01", "image_size": 64, "batch_size": 8, "seed": 3}}
    assert DataConfig.from_checkpoint(old) == DataConfig(seq_len=12, image_size=64, seed=3)
    new = {"data_config": DataConfig(seq_len=7, sampling="window").to_dict(), "args": {"seq_len": 12}}
    assert DataConfig.from_checkpoint(new) == DataConfig(seq_len=7, sampling="window")
    with pytest.raises(InputError, match="sampling must be one of"):
        DataConfig(sampling="random")
