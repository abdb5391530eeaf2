"""make_synthetic_data.py: layout, annotation files, phase-dependent content, nuisance variation between
wells (measured from the frames), determinism, formats, CLI."""
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import cli
from make_synthetic_data import PHASES, get_args_parser, main, make_synthetic_dataset, render_well

REPO = Path(__file__).resolve().parents[1]


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
    """Early one-cell frames are bright in the centre, blastocysts have a dark cavity; empty wells are flat.
    Measured at fixed pixels, so on centred wells."""
    frames, hours, phase = render_well(np.random.default_rng(0), 40, 64, embryo=True, centred=True)
    assert frames.shape == (40, 64, 64) and np.all(np.diff(hours) > 0)
    centre = frames[:, 24:40, 24:40].astype(float).mean(axis=(1, 2))
    assert centre[(phase >= 0) & (phase <= 2)].mean() > centre[phase >= PHASES.index("tB")].mean() + 30
    empty, _, _ = render_well(np.random.default_rng(1), 40, 64, embryo=False, centred=True)
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


# Nuisance variation between wells: the default (realistic) set against the centred one of the same seed.

@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Index paths of the same 8 wells x 8 frames at 48 px, realistic and centred."""
    out = tmp_path_factory.mktemp("both")
    kw = dict(n_embryos=8, n_frames=8, size=48, seed=4)
    return make_synthetic_dataset(out / "real", **kw), make_synthetic_dataset(out / "centred", centred=True, **kw)


def wells(index, label=None):
    """{embryo_id: (T, H, W) uint8 frames in RUN order} of the wells with `label` (all when None)."""
    df = pd.read_csv(index)
    out = {}
    for rel, embryo_id, lab in zip(df["path"], df["embryo_id"], df["label"], strict=True):
        if label is None or lab == label:
            files = sorted((index.parent / rel).iterdir(), key=lambda p: int(re.search(r"_RUN(\d+)", p.name).group(1)))
            out[embryo_id] = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])
    return out


def contrast_centroid(frames):
    """(x, y) as fractions of the frame: centroid of the well's time-mean frame weighted by its distance from
    the median gray (the bright zona and cells, the dark well edge)."""
    mean = frames.astype(np.float64).mean(axis=0)
    weight = np.abs(mean - np.median(mean))
    yy, xx = np.mgrid[0:mean.shape[0], 0:mean.shape[1]]
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum() / mean.shape[0]


def test_embryo_position_varies_between_wells(both):
    real, centred = both
    spread = {}
    for name, index in (("real", real), ("centred", centred)):
        centres = np.array([contrast_centroid(f) for f in wells(index, label=1).values()])
        spread[name] = np.linalg.norm(centres.std(axis=0))
    assert spread["real"] > 0.03  # a few percent of the frame, measured from the pixels
    assert spread["real"] > 5 * spread["centred"]


def test_brightness_varies_between_wells(both):
    real, centred = both
    spread = {name: np.std([f.mean() for f in wells(index).values()])
              for name, index in (("real", real), ("centred", centred))}
    assert spread["real"] > 5.0  # gray levels
    assert spread["real"] > 3 * spread["centred"]


def corner_changes(frames):
    """Per consecutive pair of frames: the largest fraction, over the four corner strips (a sixth of the height,
    half the width), of pixels that jump by more than 60 gray levels, as the burnt-in time stamp does."""
    h, w = frames.shape[1] // 6, frames.shape[2] // 2
    jumps = np.abs(np.diff(frames.astype(np.int16), axis=0)) > 60  # (T-1, H, W)
    corners = [jumps[:, :h, :w], jumps[:, :h, -w:], jumps[:, -h:, :w], jumps[:, -h:, -w:]]
    return np.max([c.mean(axis=(1, 2)) for c in corners], axis=0)


def test_time_stamp_changes_every_frame(both):
    real, centred = both
    for frames in wells(real).values():
        assert np.all(corner_changes(frames) > 0.012)  # 3 or more pixels of changed digits (of 192), every frame
    for frames in wells(centred).values():
        assert np.all(corner_changes(frames) < 0.008)  # at most 1 pixel: noise, debris


def test_phase_not_readable_from_fixed_pixels():
    """Leave-one-well-out nearest neighbour on 8x8 raw pixels tells the coarse stage (1 cell, cleavage, morula,
    blastocyst) of centred wells well; on realistic wells it falls far behind."""
    def stage_accuracy(centred):
        pixels, stage, well = [], [], []
        for w in range(10):
            frames, _, phase = render_well(np.random.default_rng([0, w]), 16, 32, embryo=True, centred=centred)
            pixels.append([cv2.resize(f, (8, 8), interpolation=cv2.INTER_AREA).ravel() for f in frames])
            stage.append(np.digitize(phase, [PHASES.index("t2"), PHASES.index("tM"), PHASES.index("tB")]))
            well.append(np.full(len(frames), w))
        x, y, g = np.concatenate(pixels).astype(float), np.concatenate(stage), np.concatenate(well)
        dist = ((x[:, None] - x[None]) ** 2).sum(-1)
        dist[g[:, None] == g[None]] = np.inf
        return (y[dist.argmin(axis=1)] == y).mean()

    centred, real = stage_accuracy(True), stage_accuracy(False)
    assert centred > 0.7
    assert real < centred - 0.2


def test_development_same_in_both_modes(both):
    """The nuisance changes pixels only: the same seed gives the same index and annotation files."""
    real, centred = both
    assert real.read_text() == centred.read_text()
    for f in sorted((real.parent / "annotations").iterdir()):
        assert f.read_bytes() == (centred.parent / "annotations" / f.name).read_bytes()
    frames_real, frames_centred = wells(real, label=1), wells(centred, label=1)
    assert all(not np.array_equal(frames_real[k], frames_centred[k]) for k in frames_real)


def tree_digest(root):
    """sha256 over every file's relative path and bytes under root."""
    digest = hashlib.sha256()
    for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return digest.hexdigest()


def test_realistic_deterministic_per_seed(tmp_path):
    kw = dict(n_embryos=3, n_frames=4, size=32)
    make_synthetic_dataset(tmp_path / "a", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kw)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_import_loads_no_torch():
    code = "import sys, make_synthetic_data; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_centred_flag_and_shared_seed(tmp_path, capsys):
    parser = get_args_parser()
    assert parser.parse_args([]).seed == cli.DEFAULT_SEED and not parser.parse_args([]).centred
    assert "equal-size, equal-brightness" in parser.format_help()
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--n_embryos", "2", "--n_frames", "2", "--size", "32",
                              "--centred", "--seed", "3"])
    assert main(args) == 0
    centred_index = make_synthetic_dataset(tmp_path / "f", n_embryos=2, n_frames=2, size=32, seed=3, centred=True)
    assert tree_digest(tmp_path / "d") == tree_digest(centred_index.parent)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--format", "gif"])
    assert stop.value.code == cli.EXIT_BAD_INPUT
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
