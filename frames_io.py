"""Reading embryo recordings: image folders, video files and TIFF stacks; natural sort; naming conventions;
the decoded-frame cache.

No torch here: build_index.py and the analysis import it. Every decoder returns gray frames (N, size, size)
(uint8, or uint16 for 16-bit sources) centre-cropped to a square, and raises `BadFile` naming the file.
Library noise (libpng, libtiff, ffmpeg, OpenCV's AVI parser) is kept off stderr: the BadFile is the message.
"""
import contextlib
import hashlib
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cli import InputError, atomic_write

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv")
TIFF_EXTS = (".tif", ".tiff")
FULL_PROBE_EXTS = (".png", ".tif", ".tiff")  # may be 16-bit or of a pixel type we cannot use
# Developmental phases in time order, as annotated in the public Gomez et al. (2022) dataset.
PHASES = ("tPB2", "tPNa", "tPNf", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9+",
          "tM", "tSB", "tB", "tEB", "tHB")


if "OPENCV_LOG_LEVEL" not in os.environ:  # a level the user sets wins
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@contextlib.contextmanager
def _stderr_silenced():
    """fd 2 to /dev/null: ffmpeg and OpenCV's AVI parser print there directly, past OpenCV's log level.
    Used only around video calls, which run in the calling thread (image decodes in pool threads are
    silenced by the log level instead)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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


def stack_frames(frames, wide: bool = False):
    """Stack frames into one array; 8-bit frames are widened (x257) when others are 16-bit, or when `wide`
    (frames of a recording whose other frames are 16-bit)."""
    if wide or any(f.dtype == np.uint16 for f in frames):
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


def probe_image(path) -> np.dtype:
    """Check that an image file decodes and return its pixel type. PNG and TIFF are decoded fully: a reduced
    decode converts to 8 bits and so hides 16-bit and unusable (e.g. int16) frames; others (JPEG, BMP: 8-bit)
    at reduced resolution, which is fast for JPEG."""
    if Path(path).suffix.lower() in FULL_PROBE_EXTS:
        return _to_gray(_imdecode(path, cv2.IMREAD_UNCHANGED), path).dtype
    _imdecode(path, cv2.IMREAD_REDUCED_GRAYSCALE_4)
    return np.dtype(np.uint8)


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
    with _stderr_silenced():
        return _decode_video(path, size, positions)


def _decode_video(path, size, positions):
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
    n = 0
    with _stderr_silenced():
        cap = _open_video(path)
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


CACHE_VERSION = 2  # 2: the file name ends with the crc32 of the frames


@dataclass
class Recording:
    """One recording: a frame list (a folder, or the frames clip rows name), a video file or a TIFF stack."""

    kind: str  # "frames", "video", "tiff"; "missing" or "unknown" for paths that are neither
    path: Path
    frames: list = field(default_factory=list)
    n: int = 0
    max_value: float = 255.0
    cache_file: Path | None = None
    error: str = ""


def recording_kind(path: Path) -> str:
    """What a path of an index.csv video row holds."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return "frames"
    if suffix in TIFF_EXTS:
        return "tiff"
    if suffix in VIDEO_EXTS:
        return "video"
    return "missing" if not path.exists() else "unknown"


class FrameStore:
    """Reads recordings at one image size. With a cache folder, each recording is decoded once into
    `<cache_dir>/<name>-<key>-<crc32>.npy` (keyed by path, mtime, size and image size; the crc32 of the
    frames is checked at every prepare and a damaged file is decoded again) and memory-mapped after;
    without one, `prepare` checks that every frame decodes (fast, reduced resolution) and reads decode."""

    def __init__(self, image_size: int, cache_dir: Path | None = None):
        self.image_size, self.cache_dir = int(image_size), cache_dir

    def prepare(self, rec: Recording, pool):
        """Fill in the frame list, count and range; decode into the cache when there is one. Raises BadFile."""
        if rec.kind == "missing":
            raise BadFile(rec.path, "does not exist")
        if rec.kind == "unknown":
            raise BadFile(rec.path, f"not a frame folder, video ({' '.join(VIDEO_EXTS)}) or TIFF stack")
        if rec.kind == "frames":
            if not rec.frames:
                rec.frames = list_frames(rec.path)
                if not rec.frames:
                    raise BadFile(rec.path, f"no image frames ({' '.join(IMAGE_EXTS)}) directly in this "
                                            f"folder (subfolders such as F0/ are not read)")
            for f in rec.frames:
                if not f.is_file():
                    raise BadFile(f, "does not exist")
        if self.cache_dir is None:
            self._light_check(rec, pool)
            return
        name = re.sub(r"[^\w.-]", "_", rec.path.name)[:60]
        stem = f"{name}-{self._cache_key(rec)}"
        for found in sorted(self.cache_dir.glob(f"{stem}-*.npy")) if self.cache_dir.is_dir() else []:
            arr = self._open_cached(found)
            if arr is not None:
                rec.cache_file, rec.n, rec.max_value = found, arr.shape[0], float(np.iinfo(arr.dtype).max)
                return
            with contextlib.suppress(OSError):
                found.unlink()  # damaged: decode again
        arr = self._decode_all(rec, pool)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot write the frame cache in {self.cache_dir} ({e.strerror}); pass --cache_dir "
                             f"with a writable folder, or --cache_dir off") from None
        rec.cache_file = self.cache_dir / f"{stem}-{zlib.crc32(arr):08x}.npy"
        atomic_write(rec.cache_file, lambda f: np.save(f, arr))
        rec.n, rec.max_value = arr.shape[0], float(np.iinfo(arr.dtype).max)

    def _open_cached(self, path: Path) -> np.ndarray | None:
        """The memory-mapped frames of a cache file, or None when it is damaged: unreadable, of the wrong
        shape, or frames whose crc32 (a few ms per 100 MB) differs from the one in its name."""
        try:
            arr = np.load(path, mmap_mode="r")
            expected = int(path.stem.rsplit("-", 1)[1], 16)
        except (ValueError, OSError, EOFError):
            return None
        if arr.ndim != 3 or arr.shape[1:] != (self.image_size, self.image_size) or arr.shape[0] == 0 \
                or arr.dtype not in (np.uint8, np.uint16) or zlib.crc32(arr) != expected:
            return None
        return arr

    def read(self, rec: Recording, positions: np.ndarray) -> np.ndarray:
        """Integer frames (T, H, W) of a prepared recording at `positions`. Raises BadFile or OSError."""
        if rec.cache_file is not None:
            return np.asarray(np.load(rec.cache_file, mmap_mode="r")[positions])
        if rec.kind == "video":
            return decode_video(rec.path, self.image_size, positions)
        if rec.kind == "tiff":
            return decode_tiff(rec.path, self.image_size)[positions]
        decoded = {int(p): decode_image(rec.frames[int(p)], self.image_size) for p in np.unique(positions)}
        return stack_frames([decoded[int(p)] for p in positions], wide=rec.max_value > 255)

    def _cache_key(self, rec: Recording) -> str:
        files = rec.frames if rec.kind == "frames" else [rec.path]
        h = hashlib.sha1(f"v{CACHE_VERSION}|{self.image_size}|{rec.kind}".encode())
        for f in files:
            st = f.stat()
            h.update(f"|{f}|{st.st_mtime_ns}|{st.st_size}".encode())
        return h.hexdigest()[:16]

    def _decode_all(self, rec: Recording, pool) -> np.ndarray:
        if rec.kind == "video":
            return decode_video(rec.path, self.image_size)
        if rec.kind == "tiff":
            return decode_tiff(rec.path, self.image_size)
        return stack_frames(list(pool.map(lambda f: decode_image(f, self.image_size), rec.frames)))

    def _light_check(self, rec: Recording, pool):
        """Without a cache: check that every frame decodes and has a usable pixel type, so that bad rows show up
        at build time, and take the recording's range from all of its frames."""
        if rec.kind == "video":
            rec.n, rec.max_value = count_video_frames(rec.path), 255.0
        elif rec.kind == "tiff":
            arr = decode_tiff(rec.path, self.image_size)
            rec.n, rec.max_value = arr.shape[0], float(np.iinfo(arr.dtype).max)
        else:
            dtypes = set(pool.map(probe_image, rec.frames))
            rec.n, rec.max_value = len(rec.frames), 65535.0 if np.dtype(np.uint16) in dtypes else 255.0
