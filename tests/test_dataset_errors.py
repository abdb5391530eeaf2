"""dataset_ivf.py: bad inputs (with and without skip_bad), grouped splits, clip rows of any length."""
import logging

import cv2
import numpy as np
import pandas as pd
import pytest

from cli import InputError
from dataset_ivf import IVFSequenceDataset
from make_synthetic_data import make_synthetic_dataset


def good_folder(path, n=4):
    path.mkdir(parents=True)
    for k in range(n):
        cv2.imwrite(str(path / f"x_RUN{k + 1}.jpeg"), np.full((16, 16), 12 * k, np.uint8))


def make_missing(root):
    return "nowhere", "nowhere"


def make_empty_folder(root):
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no frames here")
    return "empty", "empty"


def make_zero_byte_video(root):
    (root / "zero.avi").write_bytes(b"")
    return "zero.avi", "zero.avi"


def make_unreadable_video(root):
    (root / "junk.mp4").write_bytes(b"this is not a video" * 100)
    return "junk.mp4", "junk.mp4"


def make_truncated_jpeg(root):
    good_folder(root / "trunc")
    frame = root / "trunc" / "x_RUN3.jpeg"
    frame.write_bytes(frame.read_bytes()[:-40])
    return "trunc", "x_RUN3.jpeg"


def make_non_image_file(root):
    (root / "readme.txt").write_text("hello")
    return "readme.txt", "readme.txt"


def make_garbage_frame(root):
    good_folder(root / "garbage")
    (root / "garbage" / "x_RUN2.png").write_bytes(b"\x89PNG not really")
    return "garbage", "x_RUN2.png"


def make_int16_tiff_frame(root):
    """One int16 TIFF among JPEG frames: a reduced-resolution probe would see 8-bit gray and miss it."""
    good_folder(root / "int16")
    assert cv2.imwrite(str(root / "int16" / "x_RUN3.tif"), np.full((16, 16), -5, np.int16))
    return "int16", "x_RUN3.tif"


BAD = [make_missing, make_empty_folder, make_zero_byte_video, make_unreadable_video, make_truncated_jpeg,
       make_non_image_file, make_garbage_frame, make_int16_tiff_frame]


@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_bad_source(tmp_path, caplog, make_bad, cached):
    for name in ("AA1-1", "AA1-2", "BB2-1"):
        good_folder(tmp_path / name)
    bad_path, culprit = make_bad(tmp_path)
    rows = [{"path": "AA1-1", "label": 1}, {"path": "AA1-2", "label": 1}, {"path": bad_path, "label": 0},
            {"path": "BB2-1", "label": 1}]
    index = tmp_path / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    kw = dict(seq_len=3, image_size=16, cache_dir=tmp_path / "cache" if cached else None)
    with pytest.raises(InputError) as err:
        IVFSequenceDataset(index, **kw)
    msg = str(err.value)
    assert "line 4" in msg and culprit in msg and "index.csv" in msg and "\n" not in msg
    with caplog.at_level(logging.WARNING, logger="dataset_ivf"):
        ds = IVFSequenceDataset(index, skip_bad=True, **kw)
    assert len(ds) == 3 and [ds[i]["cell_id"] for i in range(3)] == ["AA1-1", "AA1-2", "BB2-1"]
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("line 4" in w and culprit in w for w in warnings) == 1
    assert any("skipped 1 of 4 rows" in w for w in warnings)


def test_all_rows_bad_is_still_an_error(tmp_path):
    pd.DataFrame([{"path": "a"}, {"path": "b"}]).to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(InputError, match="no usable rows"):
        IVFSequenceDataset(tmp_path / "index.csv", skip_bad=True)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_csv_without_path_column(tmp_path, skip_bad):
    pd.DataFrame([{"file": "a", "label": 1}]).to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(InputError, match="no 'path' column.*'paths' column"):
        IVFSequenceDataset(tmp_path / "index.csv", skip_bad=skip_bad)


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("label", ["embryo", "0.5", "-2"])
def test_label_not_a_class_number(tmp_path, skip_bad, label):
    good_folder(tmp_path / "AA1-1")
    good_folder(tmp_path / "AA1-2")
    pd.DataFrame([{"path": "AA1-1", "label": "1"}, {"path": "AA1-2", "label": label}]).to_csv(
        tmp_path / "index.csv", index=False)
    with pytest.raises(InputError, match=r"line 3 \(AA1-2\): label .* is not a class number"):
        IVFSequenceDataset(tmp_path / "index.csv", skip_bad=skip_bad)


def test_blank_and_float_labels(tmp_path):
    for name in ("AA1-1", "AA1-2", "AA1-3"):
        good_folder(tmp_path / name)
    (tmp_path / "index.csv").write_text("path,label\nAA1-1,1.0\nAA1-2,\nAA1-3,0\n")
    ds = IVFSequenceDataset(tmp_path / "index.csv", seq_len=2, image_size=16)
    assert [ds[i]["label"] for i in range(3)] == [1, -1, 0]


def test_missing_index_csv(tmp_path):
    with pytest.raises(InputError, match="not found"):
        IVFSequenceDataset(tmp_path / "nope.csv")


@pytest.fixture(scope="module")
def synthetic20(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("s20"), n_embryos=20, n_frames=3, size=32, seed=11)


def test_grouped_split_keeps_patients_apart(synthetic20, tmp_path):
    kw = dict(seq_len=2, image_size=16, val_fraction=0.3, seed=5, clips_per_recording=1)
    train = IVFSequenceDataset(synthetic20, split="train", **kw)
    val = IVFSequenceDataset(synthetic20, split="val", **kw)
    assert train.training and not val.training
    tp = {train.metadata(i)["patient_id"] for i in range(len(train))}
    vp = {val.metadata(i)["patient_id"] for i in range(len(val))}
    assert tp and vp and not tp & vp
    assert len(train) + len(val) == 20
    table = pd.DataFrame([ds.metadata(i) for ds in (train, val) for i in range(len(ds))])
    assert len(table) == 20 and set(table["split"]) == {"train", "val"}
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert sorted(table.loc[table["split"] == "val", "cell_id"]) == sorted(val[i]["cell_id"] for i in range(len(val)))
    again = IVFSequenceDataset(synthetic20, split="val", **kw)
    assert [again[i]["cell_id"] for i in range(len(again))] == [val[i]["cell_id"] for i in range(len(val))]
    other = IVFSequenceDataset(synthetic20, split="val", **{**kw, "seed": 6})
    assert {other[i]["cell_id"] for i in range(len(other))} != {val[i]["cell_id"] for i in range(len(val))}


def test_patient_from_embryo_id_when_no_column(tmp_path):
    for name in ("AA83-1", "AA83-2", "AA83-7", "BC12-1", "BC12-2", "ZZ9-1"):
        good_folder(tmp_path / name)
    pd.DataFrame({"path": ["AA83-1", "AA83-2", "AA83-7", "BC12-1", "BC12-2", "ZZ9-1"]}).to_csv(
        tmp_path / "index.csv", index=False)
    for seed in range(4):
        val = IVFSequenceDataset(tmp_path / "index.csv", split="val", val_fraction=0.34, seed=seed, seq_len=2)
        ids = {val[i]["cell_id"] for i in range(len(val))}
        assert ids in ({"AA83-1", "AA83-2", "AA83-7"}, {"BC12-1", "BC12-2"}, {"ZZ9-1"})


def test_split_column_is_honoured(tmp_path):
    for name in ("A-1", "A-2", "B-1"):
        good_folder(tmp_path / name)
    pd.DataFrame({"path": ["A-1", "A-2", "B-1"], "split": ["train", "test", "val"]}).to_csv(
        tmp_path / "index.csv", index=False)
    for split, expected in (("train", ["A-1"]), ("val", ["B-1"]), ("test", ["A-2"])):
        ds = IVFSequenceDataset(tmp_path / "index.csv", split=split, seq_len=2, clips_per_recording=1)
        assert [ds[i]["cell_id"] for i in range(len(ds))] == expected
    assert len(IVFSequenceDataset(tmp_path / "index.csv", seq_len=2)) == 3


def test_blank_split_cells_get_the_grouped_split(tmp_path, caplog):
    names = ["A-1", "A-2", "B-1", "C-1", "D-1", "E-1"]
    for name in names:
        good_folder(tmp_path / name)
    pd.DataFrame({"path": names, "split": ["val", "", "", "", "", "train"]}).to_csv(
        tmp_path / "index.csv", index=False)
    splits = {s: [r.cell_id for r in IVFSequenceDataset(tmp_path / "index.csv", split=s, seq_len=2,
                                                         val_fraction=0.3).rows] for s in ("train", "val")}
    assert sorted(splits["train"] + splits["val"]) == names  # no row is lost
    assert "A-2" in splits["val"]  # a patient keeps the side its other embryo has
    assert "E-1" in splits["train"] and len(splits["val"]) >= 2  # blank patients are split too
    assert "4 rows have a blank split" in caplog.text


def test_test_split_needs_split_column(synthetic20):
    with pytest.raises(InputError, match="test split needs a 'split' column"):
        IVFSequenceDataset(synthetic20, split="test")


def test_clip_rows_longer_and_shorter_than_seq_len(tmp_path, caplog):
    good_folder(tmp_path / "AA1-1", n=20)
    names = [f"AA1-1/x_RUN{k + 1}.jpeg" for k in range(20)]
    rows = [{"cell_id": "AA1-1", "start_idx": 0, "paths": "|".join(names[0:16])},
            {"cell_id": "AA1-1", "start_idx": 10, "paths": "|".join(names[10:14])},
            {"cell_id": "AA1-1", "start_idx": 4, "paths": "|".join(names[4:12])}]
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="dataset_ivf"):
        ds = IVFSequenceDataset(tmp_path / "index.csv", seq_len=8, image_size=16, normalize="none")
    assert sum("resampled" in r.getMessage() for r in caplog.records) == 1
    assert "2 clip rows" in caplog.text
    long, short, exact = (ds[i]["frame_indices"].tolist() for i in range(3))
    assert long == [0, 2, 4, 6, 9, 11, 13, 15]  # 16 frames spread evenly, ends kept
    assert sorted(set(short)) == [10, 11, 12, 13] and len(short) == 8 and short == sorted(short)
    assert exact == list(range(4, 12))
    for i in range(3):
        assert ds[i]["video"].shape == (8, 1, 16, 16)
    values = ds[1]["video"][:, 0, 8, 8].numpy() * 255
    assert np.allclose(values, [12 * k for k in short], atol=2)


def test_clip_row_with_missing_frame(tmp_path):
    good_folder(tmp_path / "AA1-1", n=4)
    pd.DataFrame([{"cell_id": "AA1-1", "start_idx": 0, "paths": "AA1-1/x_RUN1.jpeg|AA1-1/x_RUN9.jpeg"}]).to_csv(
        tmp_path / "index.csv", index=False)
    with pytest.raises(InputError, match=r"line 2 \(AA1-1\): .*x_RUN9.jpeg: does not exist"):
        IVFSequenceDataset(tmp_path / "index.csv", seq_len=2)
