"""Issue 11, data side: the range of mixed 8/16-bit folders, empty annotation files, damaged cache files,
library noise kept off stderr."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dataset_ivf import IVFSequenceDataset

REPO = Path(__file__).resolve().parents[1]


def write_index(root: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)
    return root / "index.csv"


@pytest.mark.parametrize("cache", [None, "cache"])
def test_mixed_8_and_16_bit_frames_share_the_recordings_range(tmp_path, cache):
    folder = tmp_path / "AA1-1"
    folder.mkdir()
    cv2.imwrite(str(folder / "x_RUN1.png"), np.full((16, 16), 100, np.uint8))  # 8-bit first frame
    for k in (2, 3, 4):
        cv2.imwrite(str(folder / f"x_RUN{k}.png"), np.full((16, 16), 30000, np.uint16))
    index = write_index(tmp_path, [{"path": "AA1-1"}])
    ds = IVFSequenceDataset(index, seq_len=4, image_size=16, sampling="window", normalize="none",
                            cache_dir=None if cache is None else tmp_path / cache)
    video = ds[0]["video"][:, 0, 8, 8].numpy()
    assert np.allclose(video, [100 / 255, 30000 / 65535, 30000 / 65535, 30000 / 65535], atol=1e-4)
    assert np.allclose(ds.load_frames(0, [0])[:, 0, 8, 8], [100 / 255], atol=1e-4)  # the 8-bit frame alone


def test_empty_annotation_files_mean_no_phases(tmp_path):
    folder = tmp_path / "AA1-1"
    folder.mkdir()
    for k in range(4):
        cv2.imwrite(str(folder / f"x_RUN{k + 1}.jpeg"), np.full((16, 16), 40 * k, np.uint8))
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "AA1-1_phases.csv").write_bytes(b"")  # an empty well: 0 bytes
    (ann / "AA1-1_timeElapsed.csv").write_bytes(b"\n")
    index = write_index(tmp_path, [{"path": "AA1-1"}])
    item = IVFSequenceDataset(index, seq_len=4, image_size=16, sampling="window", annotations_dir=ann)[0]
    assert item["phase"] == [""] * 4 and np.isnan(item["hours"].numpy()).all()


def test_damaged_cache_file_is_decoded_again(tmp_path):
    folder = tmp_path / "AA1-1"
    folder.mkdir()
    for k in range(6):
        cv2.imwrite(str(folder / f"x_RUN{k + 1}.png"), np.full((16, 16), 30 * k + 10, np.uint8))
    index = write_index(tmp_path, [{"path": "AA1-1"}])
    kw = dict(seq_len=6, image_size=16, sampling="window", normalize="none", cache_dir=tmp_path / "cache")
    expected = IVFSequenceDataset(index, **{**kw, "cache_dir": None})[0]["video"]
    assert np.array_equal(IVFSequenceDataset(index, **kw)[0]["video"], expected)
    (cache_file,) = (tmp_path / "cache").glob("*.npy")
    data = bytearray(cache_file.read_bytes())
    header = len(data) - 6 * 16 * 16
    data[header:] = np.random.default_rng(0).integers(0, 256, len(data) - header, dtype=np.uint8).tobytes()
    cache_file.write_bytes(bytes(data))  # the .npy header is intact, the frames are noise
    assert np.array_equal(IVFSequenceDataset(index, **kw)[0]["video"], expected)
    (again,) = (tmp_path / "cache").glob("*.npy")
    assert np.load(again)[:, 8, 8].tolist() == [30 * k + 10 for k in range(6)]


def truncated_png(root: Path) -> str:
    folder = root / "AA1-1"
    folder.mkdir()
    for k in range(4):
        cv2.imwrite(str(folder / f"x_RUN{k + 1}.png"), np.random.default_rng(k).integers(0, 255, (64, 64), np.uint8))
    frame = folder / "x_RUN2.png"
    frame.write_bytes(frame.read_bytes()[:300])
    return "AA1-1"


def avi_without_frames(root: Path) -> str:
    writer = cv2.VideoWriter(str(root / "ok.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 64), isColor=False)
    for k in range(10):
        writer.write(np.random.default_rng(k).integers(0, 255, (64, 64), np.uint8))
    writer.release()
    (root / "cut.avi").write_bytes((root / "ok.avi").read_bytes()[:2000])  # header only, no frames
    return "cut.avi"


def mp4_without_moov(root: Path) -> str:
    (root / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    return "junk.mp4"


@pytest.mark.parametrize("make", [truncated_png, avi_without_frames, mp4_without_moov], ids=lambda f: f.__name__)
@pytest.mark.parametrize("cache", ["off", "cache"])
def test_library_noise_stays_off_stderr(tmp_path, make, cache):
    bad = make(tmp_path)
    index = write_index(tmp_path, [{"path": bad}])
    code = ("import sys; from dataset_ivf import IVFSequenceDataset; from cli import InputError\n"
            "try:\n"
            "    IVFSequenceDataset(sys.argv[1], seq_len=4, image_size=32, cache_dir=sys.argv[2])\n"
            "except InputError as e:\n"
            "    print(f'error: {e}', file=sys.stderr); sys.exit(2)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    cache_dir = cache if cache == "off" else str(tmp_path / cache)
    result = subprocess.run([sys.executable, "-c", code, str(index), cache_dir], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and bad in result.stderr, result.stderr
