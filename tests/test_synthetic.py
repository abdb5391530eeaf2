"""make_synthetic_data.py: layout, annotation files, phase-dependent content, formats, CLI."""
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from make_synthetic_data import PHASES, get_args_parser, main, make_synthetic_dataset, render_well


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return make_synthetic_dataset(out, n_embryos=8, n_frames=12, size=48, seed=3)


def test_index_and_ids(synthetic):
    df = pd.read_csv(synthetic)
    assert list(df.columns[:4]) == ["path", "embryo_id", "label", "patient_id"]
    assert len(df) == 8
    assert set(df["label"]) == {0, 1}
    assert (df["label"] == 0).sum() == 2  # about a quarter empty
    for embryo_id, patient in zip(df["embryo_id"], df["patient_id"], strict=True):
        assert re.fullmatch(r"[A-Z]{2}\d{2}-\d+", embryo_id)
        assert embryo_id.rsplit("-", 1)[0] == patient


def test_patients_group_several_embryos(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=20, n_frames=2, size=32, seed=0)
    df = pd.read_csv(index)
    assert df["patient_id"].nunique() < len(df)
    assert df["embryo_id"].is_unique


def test_frame_names_not_zero_padded(synthetic):
    df = pd.read_csv(synthetic)
    folder = synthetic.parent / df["path"][0]
    names = [p.name for p in folder.iterdir()]
    runs = sorted(int(re.search(r"_RUN(\d+)\.jpeg$", n).group(1)) for n in names)
    assert runs == list(range(1, 13))
    assert not any("RUN0" in n for n in names)
    img = cv2.imread(str(folder / names[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 48) and img.dtype == np.uint8


def test_annotation_files(synthetic):
    df = pd.read_csv(synthetic)
    ann = synthetic.parent / "annotations"
    for embryo_id, label in zip(df["embryo_id"], df["label"], strict=True):
        times = pd.read_csv(ann / f"{embryo_id}_timeElapsed.csv")
        assert list(times.columns) == ["frame_index", "time"]
        assert times["frame_index"].tolist() == list(range(1, 13))
        assert np.all(np.diff(times["time"]) > 0)
        phases_file = ann / f"{embryo_id}_phases.csv"
        assert phases_file.exists() == (label == 1)
        if label == 1:
            phases = pd.read_csv(phases_file, header=None, names=["phase", "first", "last"])
            order = [PHASES.index(p) for p in phases["phase"]]
            assert order == sorted(order)
            assert np.all(phases["first"] <= phases["last"])
            assert np.all(phases["first"].to_numpy()[1:] > phases["last"].to_numpy()[:-1])
            assert phases["first"].min() >= 1 and phases["last"].max() <= 12


def test_content_follows_phase():
    """Early one-cell frames are bright in the centre, blastocysts have a dark cavity; empty wells are flat."""
    frames, hours, phase = render_well(np.random.default_rng(0), 40, 64, embryo=True)
    assert frames.shape == (40, 64, 64) and np.all(np.diff(hours) > 0)
    centre = frames[:, 24:40, 24:40].astype(float).mean(axis=(1, 2))
    assert centre[(phase >= 0) & (phase <= 2)].mean() > centre[phase >= PHASES.index("tB")].mean() + 30
    empty, _, _ = render_well(np.random.default_rng(1), 40, 64, embryo=False)
    assert frames[:, 16:48, 16:48].std(axis=(1, 2)).mean() > 2 * empty[:, 16:48, 16:48].std(axis=(1, 2)).mean()
    # beyond noise and flicker, frames of one phase agree more than frames of distant phases
    small = np.stack([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA) for f in frames]).astype(float)
    small /= small.mean(axis=(1, 2), keepdims=True)
    t2, tb = np.flatnonzero(phase == PHASES.index("t2")), np.flatnonzero(phase == PHASES.index("tB"))
    same = np.abs(small[t2[0]] - small[t2[-1]]).mean()
    other = np.abs(small[t2[0]] - small[tb[0]]).mean()
    assert other > 3 * same


def test_deterministic(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", 3, 4, 32, seed=5)
    b = make_synthetic_dataset(tmp_path / "b", 3, 4, 32, seed=5)
    assert a.read_text() == b.read_text()
    rel = pd.read_csv(a)["path"][0]
    fa = sorted((a.parent / rel).iterdir())[0]
    assert fa.read_bytes() == (b.parent / rel / fa.name).read_bytes()


def test_avi_format(tmp_path):
    index = make_synthetic_dataset(tmp_path, n_embryos=2, n_frames=7, size=32, seed=1, fmt="avi")
    df = pd.read_csv(index)
    for rel in df["path"]:
        assert rel.endswith(".avi")
        cap = cv2.VideoCapture(str(tmp_path / rel))
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        assert n == 7


def test_cli(tmp_path, capsys):
    args = get_args_parser().parse_args(["--out", str(tmp_path / "d"), "--n_embryos", "2", "--n_frames", "3",
                                         "--size", "32", "--format", "avi"])
    assert main(args) == 0
    assert (tmp_path / "d" / "index.csv").exists()
    bad = get_args_parser().parse_args(["--out", str(tmp_path / "e"), "--n_frames", "0"])
    assert main(bad) == 2
    assert "n_frames" in capsys.readouterr().err
