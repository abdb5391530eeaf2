"""build_index.py: scanning a root, videos and clips modes, labels, reports, and loading the result."""
import cv2
import numpy as np
import pandas as pd
import pytest

import cli
from build_index import get_args_parser, main
from dataset_ivf import IVFSequenceDataset


def frames_folder(folder, n, size=16):
    folder.mkdir(parents=True)
    for k in range(n):
        cv2.imwrite(str(folder / f"D2013_WELL1_RUN{k + 1}.jpeg"), np.full((size, size), 8 * k, np.uint8))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "embryo_dataset"
    frames_folder(r / "AA83-1", 25)
    frames_folder(r / "AA83-1" / "F0", 3)  # duplicate subfolder: ignored
    frames_folder(r / "AA83-2", 5)
    frames_folder(r / "BB10-1", 12)
    writer = cv2.VideoWriter(str(r / "CC7-1.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (16, 16), isColor=False)
    for k in range(6):
        writer.write(np.full((16, 16), 20 * k, np.uint8))
    writer.release()
    assert cv2.imwritemulti(str(r / "DD1-1.tif"), [np.full((16, 16), k, np.uint8) for k in range(4)])
    (r / "empty").mkdir()
    frames_folder(r / "nested_only" / "F0", 3)
    (r / "broken.avi").write_bytes(b"")
    (r / "notes.txt").write_text("x")
    return r


def run(args):
    return cli.run_main("build_index.py", main, get_args_parser().parse_args(args))


def test_videos_mode(root, tmp_path, capsys):
    out = tmp_path / "out" / "index.csv"
    assert run(["--root", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    df = pd.read_csv(out)
    assert df["embryo_id"].tolist() == ["AA83-1", "AA83-2", "BB10-1", "CC7-1", "DD1-1"]
    assert df["patient_id"].tolist() == ["AA83", "AA83", "BB10", "CC7", "DD1"]
    assert df["n_frames"].tolist()[:3] == [25, 5, 12]
    assert df["path"][0] == "../embryo_dataset/AA83-1"
    for name in ("empty", "nested_only", "broken.avi", "notes.txt"):
        assert f"skipped {name}:" in err
    assert "subfolders" in err.split("skipped nested_only:")[1].splitlines()[0]
    ds = IVFSequenceDataset(out, seq_len=4, image_size=16)
    assert len(ds) == 5 and ds.num_frames(0) == 25 and ds.num_frames(3) == 6 and ds.num_frames(4) == 4


def test_clips_mode_exact_seq_len(root, tmp_path, capsys, caplog):
    out = tmp_path / "clips.csv"
    assert run(["--root", str(root), "--out", str(out), "--mode", "clips", "--seq_len", "4",
                "--subsample", "3", "--stride", "2"]) == 0
    err = capsys.readouterr().err
    df = pd.read_csv(out)
    assert list(df.columns[:3]) == ["cell_id", "start_idx", "paths"]
    a = df[df["cell_id"] == "AA83-1"]
    assert a["start_idx"].tolist() == [0, 6, 12]  # 9 subsampled frames, windows of 4 every 2
    assert all(len(p.split("|")) == 4 for p in df["paths"])
    assert a["paths"].iloc[1].split("|")[0].endswith("_RUN7.jpeg")
    assert "skipped AA83-2: only 2 frames" in err and "skipped CC7-1.avi: clips mode needs frame folders" in err
    ds = IVFSequenceDataset(out, seq_len=4, image_size=16, normalize="none")
    assert "resampled" not in caplog.text
    item = ds[1]
    assert np.allclose(item["video"][:, 0, 8, 8].numpy() * 255, [8 * k for k in (6, 9, 12, 15)], atol=2)


def test_labels_are_merged(root, tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"embryo_id": ["AA83-1", "BB10-1", "ZZ1-1"], "label": ["1", "0", "1"],
                  "split": ["train", "val", "train"]}).to_csv(labels, index=False)
    out = tmp_path / "index.csv"
    assert run(["--root", str(root), "--out", str(out), "--labels", str(labels)]) == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("embryo_id")
    assert df.loc["AA83-1", "label"] == "1" and df.loc["BB10-1", "label"] == "0" and df.loc["AA83-2", "label"] == ""
    assert df.loc["BB10-1", "split"] == "val"
    ds = IVFSequenceDataset(out, seq_len=2, image_size=16, split="train")
    train_ids = [ds[i]["cell_id"] for i in range(len(ds))]
    assert "AA83-1" in train_ids and "AA83-2" in train_ids  # unlabelled AA83-2 follows its patient
    assert "BB10-1" not in train_ids


@pytest.mark.parametrize("case", ["no_root", "bad_label", "no_label_column", "bad_stride"])
def test_bad_input_exits_2(root, tmp_path, capsys, case):
    labels = tmp_path / "labels.csv"
    args = ["--root", str(root), "--out", str(tmp_path / "i.csv")]
    if case == "no_root":
        args[1] = str(tmp_path / "missing")
    elif case == "bad_label":
        labels.write_text("embryo_id,label\nAA83-1,yes\n")
        args += ["--labels", str(labels)]
    elif case == "no_label_column":
        labels.write_text("embryo_id,class\nAA83-1,1\n")
        args += ["--labels", str(labels)]
    else:
        args += ["--stride", "0"]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("build_index.py: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "i.csv").exists()


def test_root_without_embryos_exits_2(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.txt").write_text("x")
    assert run(["--root", str(tmp_path / "r"), "--out", str(tmp_path / "i.csv")]) == 2
    assert "no usable embryos" in capsys.readouterr().err
