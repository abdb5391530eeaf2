"""Decoding embryo recordings: image folders, video files and TIFF stacks; natural sort; naming conventions.

No torch here: build_index.py and the analysis import it. Every decoder returns gray frames (N, size, size)
(uint8, or uint16 for 16-bit sources) centre-cropped to a square, and raises `BadFile` naming the file.
"""
import re
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv")
TIFF_EXTS = (".tif", ".tiff")
# Developmental phases in time order, as annotated in the public Gomez et al. (2022) dataset.
PHASES = ("tPB2", "tPNa", "tPNf", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9+",
          "tM", "tSB", "tB", "tEB", "tHB")


class BadFile(Exception):
    """A source file that cannot be read; the message starts with the path."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")


def natural_key(text):
    """Sort key that orders `RUN2` before `RUN10`."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def list_frames(folder):
    """Image files directly inside `folder` in natural order; subfolders (e.g. duplicate `F0/`) are ignored."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def patient_of(embryo_id):
    """Patient id from an embryo id: `AA83-7` -> `AA83`."""
    return re.sub(r"-\d+$", "", str(embryo_id))


def run_numbers(paths):
    """RUN number of each frame file (`..._RUN12.jpeg` -> 12); position + 1 where a name has none."""
    runs = []
    for i, p in enumerate(paths):
        m = re.search(r"RUN(\d+)", Path(p).stem, re.IGNORECASE)
        runs.append(int(m.group(1)) if m else i + 1)
    return np.array(runs, dtype=np.int64)


def _to_gray(img, path):
    """Gray uint8 or uint16 frame from what OpenCV decoded."""
    if img.ndim == 3:
        code = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2], -1)
        if code == -1:
            raise BadFile(path, f"unsupported number of channels ({img.shape[2]})")
        img = img[..., 0] if code is None else cv2.cvtColor(img, code)
    if img.dtype not in (np.uint8, np.uint16):
        raise BadFile(path, f"unsupported pixel type {img.dtype} (need 8- or 16-bit)")
    return img


def _square_resize(img, size):
    """Centre-crop to a square and resize to (size, size)."""
    h, w = img.shape
    if h != w:
        m = min(h, w)
        top, left = (h - m) // 2, (w - m) // 2
        img = img[top:top + m, left:left + m]
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def stack_frames(frames):
    """Stack frames into one array; 8-bit frames are widened when others are 16-bit."""
    if any(f.dtype == np.uint16 for f in frames):
        frames = [f.astype(np.uint16) * 257 if f.dtype == np.uint8 else f for f in frames]
    return np.stack(frames)


def _check_jpeg(path, data):
    """Raise for a file named .jpg/.jpeg that is not a JPEG or is cut short."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        if data[:2].tobytes() != b"\xff\xd8":
            raise BadFile(path, "not a JPEG image")
        tail = data[-64:].tobytes().rstrip(b"\x00")
        if not tail.endswith(b"\xff\xd9"):
            raise BadFile(path, "truncated JPEG (no end-of-image marker)")


def _imdecode(path, flags):
    """Decode one image file with OpenCV, raising BadFile for empty, truncated or undecodable files."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadFile(path, f"cannot read file ({e.strerror})") from e
    if data.size == 0:
        raise BadFile(path, "empty (0-byte) file")
    _check_jpeg(path, data)
    img = cv2.imdecode(data, flags)
    if img is None:
        raise BadFile(path, "cannot decode image (damaged or not an image)")
    return img


def decode_image(path, size):
    """One gray frame resized to (size, size), uint8 or uint16."""
    return _square_resize(_to_gray(_imdecode(path, cv2.IMREAD_UNCHANGED), path), size)


def probe_image(path):
    """Check that an image file decodes (at reduced resolution, which is fast for JPEG)."""
    _imdecode(path, cv2.IMREAD_REDUCED_GRAYSCALE_4)


def _open_video(path):
    if not path.exists():
        raise BadFile(path, "does not exist")
    if path.stat().st_size == 0:
        raise BadFile(path, "empty (0-byte) video")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BadFile(path, "cannot open video (damaged or unsupported codec)")
    return cap


def decode_video(path, size, positions=None):
    """Gray frames (N, size, size) of a video; only `positions` (sorted or not) when given."""
    path = Path(path)
    cap = _open_video(path)
    wanted = None if positions is None else set(int(p) for p in positions)
    last = None if positions is None else max(wanted)
    frames, i = {}, 0
    try:
        while last is None or i <= last:
            if not cap.grab():
                break
            if wanted is None or i in wanted:
                ok, img = cap.retrieve()
                if not ok:
                    raise BadFile(path, f"cannot decode frame {i}")
                frames[i] = _square_resize(_to_gray(img, path), size)
            i += 1
    finally:
        cap.release()
    if not frames:
        raise BadFile(path, "video has no readable frames")
    if positions is None:
        return stack_frames([frames[k] for k in range(i)])
    if last >= i:
        raise BadFile(path, f"video ended after {i} frames, frame {last} was asked for")
    return stack_frames([frames[int(p)] for p in positions])


def count_video_frames(path):
    """Number of frames a video really yields (container counts can be wrong)."""
    path = Path(path)
    cap = _open_video(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise BadFile(path, "video has no readable frames")
    return n


def decode_tiff(path, size):
    """All pages of a (multi-page) TIFF as gray frames (N, size, size), uint8 or uint16."""
    path = Path(path)
    if not path.exists():
        raise BadFile(path, "does not exist")
    if path.stat().st_size == 0:
        raise BadFile(path, "empty (0-byte) file")
    ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    if not ok or not pages:
        raise BadFile(path, "cannot read TIFF stack (damaged or not a TIFF)")
    return stack_frames([_square_resize(_to_gray(p, path), size) for p in pages])
