"""Embryo time-lapse clips from index.csv: frame folders, videos and TIFF stacks, with a disk cache.

index.csv comes in two forms (relative paths resolve against the CSV's folder):
- video rows: `path` (frame folder, video file .avi/.mp4/.mov/.mkv, or multi-page TIFF), optional
  `embryo_id`, `label` (0 empty well, 1 embryo, blank unknown), `patient_id`, `split`, extra columns;
- clip rows: `cell_id,start_idx,paths` with `|`-joined frame paths in time order.
Frames are read as grayscale, centre-cropped to a square and resized to `image_size`. With
`cache_dir`, each source is decoded once into `<cache_dir>/<name>-<key>.npy` (uint8, or uint16 for
16-bit sources) keyed by path, mtime, size and image_size; later reads memory-map it.
"""
import contextlib
import hashlib
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from cli import InputError
from frames_io import (
    IMAGE_EXTS,
    PHASES,
    TIFF_EXTS,
    VIDEO_EXTS,
    BadFile,
    count_video_frames,
    decode_image,
    decode_tiff,
    decode_video,
    list_frames,
    natural_key,
    patient_of,
    probe_image,
    run_numbers,
    stack_frames,
)

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "window")
NORMALIZATIONS = ("minmax01", "none", "zscore")
SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1


@dataclass
class _Source:
    """One recording: a frame list (folder or clip rows), a video file or a TIFF stack."""
    kind: str  # "frames", "video", "tiff"; "missing" or "unknown" for paths that are neither
    path: Path
    frames: list = field(default_factory=list)
    n: int = 0
    max_value: float = 255.0
    cache_file: Path = None
    error: str = ""


@dataclass
class _Row:
    line: int  # line number in index.csv (header is line 1)
    cell_id: str
    label: int
    patient_id: str
    split: str
    extra: dict
    files: list = None  # the row's path(s) as given, resolved against the CSV folder
    source: str = ""  # key into the dataset's sources
    positions: np.ndarray = None  # clip rows: frame positions in the source
    hours: np.ndarray = None
    phase: np.ndarray = None


def _plain(value):
    """CSV cell as int or float where it reads as one, else str; ids with leading zeros ('007') stay str."""
    text = str(value).strip()
    if re.fullmatch(r"-?0\d+", text):
        return text
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def normalize_frames(frames, mode, max_value):
    """Integer frames (N, H, W) -> float32 in [0, 1]; see IVFSequenceDataset for the modes."""
    x = frames.astype(np.float32)
    if mode == "none":
        return x / max_value
    if mode == "zscore":
        z = (x - x.mean()) / max(float(x.std()), 1e-6)
        return np.clip((z + 3.0) / 6.0, 0.0, 1.0)
    cdf = np.cumsum(np.bincount(frames.ravel(), minlength=2)) / frames.size
    lo, hi = float(np.searchsorted(cdf, 0.01)), float(np.searchsorted(cdf, 0.99))
    if hi <= lo:  # flat clip: no contrast to stretch
        return x / max_value
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def resolve_cache_dir(cache_dir, index_csv):
    """The cache folder for a --cache_dir value: 'auto' = `.ivf_cache` beside index.csv, None/'off' = no cache."""
    if cache_dir is None or str(cache_dir).lower() in ("", "off", "none"):
        return None
    return Path(index_csv).parent / ".ivf_cache" if str(cache_dir) == "auto" else Path(cache_dir)


class IVFSequenceDataset(Dataset):
    """Clips of `seq_len` frames from the rows of an index.csv.

    Items: `video` float32 (T, 1, H, W) in [0, 1]; `label` int (-1 unknown); `cell_id` str;
    `frame_indices` int64 (T,) positions in the source's natural-sorted frame list (clip rows:
    among the frames the index lists for that folder); with `annotations_dir` also `hours`
    float32 (T,) (NaN where unknown), `phase` list[str] (T,) ('' where no phase applies) and
    `phase_index` int64 (T,) (index into PHASES, -1 none). The default collate works (`phase`
    comes out as T tuples of B names).

    sampling: "uniform" spreads seq_len frames over the whole recording (jittered per segment
    in training); "window" takes contiguous frames (centred in eval, random start in training).
    Sources shorter than seq_len repeat frames. Clip rows with more or fewer than seq_len frames
    are resampled evenly (one warning).
    normalize: "minmax01" stretches each clip's 1st-99th percentile to [0, 1] and clips;
    "none" divides by the source's full range (255, or 65535 for 16-bit); "zscore" standardises
    each clip, clips to +-3 std and maps linearly to [0, 1] (0.5 = clip mean) so that the
    model's sigmoid output can still reconstruct it.
    augment (training only): one random rotation (any angle) and random flips for all frames of
    a clip, plus mild brightness/contrast/gamma jitter.
    split: None = all rows; "train"/"val"/"test" use the `split` column when present, else a
    seeded split grouped by patient (`patient_id`, else the embryo id without `-<n>`), with
    `val_fraction` of patients in val; `split_out` writes the assignment as CSV.
    Randomness depends only on (seed, epoch, index); call `set_epoch` every epoch.
    cache_dir: a folder, "auto" (`.ivf_cache` beside index.csv) or None/"off" (no cache).
    Sources are checked when the dataset is built: with a cache by decoding them into the
    cache (paid once; later builds only stat the files), without it by a fast reduced-resolution
    decode of every frame. `skip_bad` drops unreadable rows with one warning each (and a count)
    instead of raising InputError; zero usable rows is still an error.
    """

    def __init__(self, index_csv, seq_len=20, image_size=128, split=None, sampling="uniform",
                 normalize="minmax01", augment=False, cache_dir=None, skip_bad=False,
                 annotations_dir=None, training=None, val_fraction=0.2, seed=0, split_out=None):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
        if seq_len < 1 or image_size < 1:
            raise ValueError("seq_len and image_size must be positive")
        self.index_csv = Path(index_csv)
        self.seq_len, self.image_size = int(seq_len), int(image_size)
        self.split, self.sampling, self.normalize = split, sampling, normalize
        self.training = (split == "train") if training is None else bool(training)
        self.augment, self.seed = bool(augment), int(seed)
        self.cache_dir = resolve_cache_dir(cache_dir, self.index_csv)
        self.has_annotations = annotations_dir is not None
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        rows, self.columns = self._read_csv()
        self._assign_splits(rows, val_fraction, split_out)
        rows = [r for r in rows if split is None or r.split == split]
        if not rows:
            raise InputError(f"{self.index_csv}: no rows in split {split!r}; check the split column "
                            f"or --val_fraction")
        self.sources = self._make_sources(rows)
        self.rows = self._check_sources(rows, skip_bad)
        n_resampled = sum(r.positions is not None and len(r.positions) != self.seq_len for r in self.rows)
        if n_resampled:
            log.warning("%s: %d clip rows do not have seq_len=%d frames; they are resampled evenly",
                        self.index_csv, n_resampled, self.seq_len)
        if annotations_dir is not None:
            self._attach_annotations(Path(annotations_dir))

    # ---- reading index.csv
    def _err(self, row, msg):
        return InputError(f"{self.index_csv} line {row.line} ({row.cell_id}): {msg}")

    def _read_csv(self):
        if not self.index_csv.is_file():
            raise InputError(f"{self.index_csv}: index CSV not found; build one with build_index.py")
        try:
            df = pd.read_csv(self.index_csv, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyInputError, UnicodeDecodeError) as e:
            raise InputError(f"{self.index_csv}: cannot parse CSV ({str(e).splitlines()[0]})") from e
        df.columns = [c.strip() for c in df.columns]
        if "paths" in df.columns:
            self.form = "clips"
        elif "path" in df.columns:
            self.form = "videos"
        else:
            raise InputError(f"{self.index_csv}: no 'path' column (video rows) or 'paths' column "
                            f"(clip rows); columns are {list(df.columns)}")
        base = self.index_csv.parent
        rows = []
        for i, rec in enumerate(df.to_dict("records")):
            line = i + 2
            if self.form == "videos":
                value = rec["path"].strip()
                if not value:
                    raise InputError(f"{self.index_csv} line {line}: empty 'path'")
                path = base / value
                cell_id = rec.get("embryo_id", "").strip() or (path.name if path.is_dir() else path.stem)
                files = [path]
            else:
                files = [base / p.strip() for p in rec["paths"].split("|") if p.strip()]
                if not files:
                    raise InputError(f"{self.index_csv} line {line}: empty 'paths'")
                cell_id = rec.get("cell_id", "").strip() or files[0].parent.name
            label = self._parse_label(rec.get("label", ""), line, cell_id)
            patient = rec.get("patient_id", "").strip() or patient_of(cell_id)
            extra = {k: _plain(v) for k, v in rec.items() if k != "paths"}
            rows.append(_Row(line, cell_id, label, patient, rec.get("split", "").strip().lower(), extra, files))
        if not rows:
            raise InputError(f"{self.index_csv}: no rows")
        return rows, list(df.columns)

    def _parse_label(self, value, line, cell_id):
        value = str(value).strip()
        if value == "":
            return -1
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number.is_integer() or number < -1:
            raise InputError(f"{self.index_csv} line {line} ({cell_id}): label {value!r} is not a class number "
                            f"(use 0 for an empty well, 1 for an embryo, blank or -1 for unknown)")
        return int(number)

    def _assign_splits(self, rows, val_fraction, split_out):
        """Use the split column where it is filled; other rows get a seeded patient-grouped train/val split."""
        for r in rows:
            if r.split and r.split not in SPLITS:
                raise self._err(r, f"split {r.split!r} is not one of {SPLITS}")
        if self.split == "test" and "split" not in self.columns:
            raise InputError(f"{self.index_csv}: a test split needs a 'split' column")
        unassigned = [r for r in rows if not r.split]
        if unassigned and "split" in self.columns:
            log.warning("%s: %d rows have a blank split; they get a seeded patient-grouped train/val split",
                        self.index_csv, len(unassigned))
        known = {r.patient_id: r.split for r in rows if r.split}  # a patient keeps the side it has
        patients = sorted({r.patient_id for r in unassigned} - set(known))
        order = np.random.default_rng(self.seed).permutation(len(patients))
        n_val = int(round(val_fraction * len(patients)))
        if val_fraction > 0 and len(patients) > 1:
            n_val = min(max(n_val, 1), len(patients) - 1)
        val = {patients[k] for k in order[:n_val]}
        for r in unassigned:
            r.split = known.get(r.patient_id) or ("val" if r.patient_id in val else "train")
        if split_out:
            out = Path(split_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            table = pd.DataFrame([{"line": r.line, "cell_id": r.cell_id, "patient_id": r.patient_id,
                                   "split": r.split, "path": str(r.files[0]) if self.form == "videos"
                                   else str(r.files[0].parent)} for r in rows])
            tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
            table.to_csv(tmp, index=False)
            os.replace(tmp, out)

    # ---- sources and cache
    def _make_sources(self, rows):
        """Group rows by recording; clip rows of one folder share one source."""
        sources, clip_frames = {}, {}
        for r in rows:
            if self.form == "videos":
                path = Path(os.path.abspath(r.files[0]))
                key = str(path)
                if key not in sources:
                    suffix = path.suffix.lower()
                    if path.is_dir():
                        kind = "frames"
                    elif suffix in TIFF_EXTS:
                        kind = "tiff"
                    elif suffix in VIDEO_EXTS:
                        kind = "video"
                    else:
                        kind = "missing" if not path.exists() else "unknown"
                    sources[key] = _Source(kind, path)
            else:
                files = [Path(os.path.abspath(f)) for f in r.files]
                key = "clips:" + "|".join(sorted({str(f.parent) for f in files}))
                clip_frames.setdefault(key, set()).update(files)
                r.files = files
                sources.setdefault(key, _Source("frames", files[0].parent))
            r.source = key
        for key, files in clip_frames.items():
            sources[key].frames = sorted(files, key=lambda p: natural_key(str(p)))
        for r in rows:
            if self.form == "clips":
                pos = {f: i for i, f in enumerate(sources[r.source].frames)}
                r.positions = np.array([pos[f] for f in r.files], dtype=np.int64)
        return sources

    def _check_sources(self, rows, skip_bad):
        """Open (and with cache_dir decode into the cache) every source; drop or raise on bad ones."""
        users = {}
        for r in rows:
            users.setdefault(r.source, []).append(r)
        bad_rows = 0
        desc = "decoding into cache" if self.cache_dir else "checking sources"
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for key, src in tqdm(self.sources.items(), desc=desc, unit="source", leave=False, disable=None):
                try:
                    self._prepare(src, pool)
                except BadFile as e:
                    src.error = str(e)
                    if not skip_bad:
                        raise self._err(users[key][0], f"{e}; fix or remove the row, or pass --skip_bad") from None
                    for r in users[key]:
                        log.warning("skipping %s line %d (%s): %s", self.index_csv, r.line, r.cell_id, e)
                        bad_rows += 1
        good = [r for r in rows if not self.sources[r.source].error]
        if bad_rows:
            log.warning("%s: skipped %d of %d rows with unreadable sources", self.index_csv, bad_rows, len(rows))
        if not good:
            raise InputError(f"{self.index_csv}: no usable rows (all {len(rows)} rows were skipped as unreadable)")
        return good

    def _prepare(self, src, pool):
        """Fill in the frame list and count; decode into the cache when there is one."""
        if src.kind == "missing":
            raise BadFile(src.path, "does not exist")
        if src.kind == "unknown":
            raise BadFile(src.path, f"not a frame folder, video ({' '.join(VIDEO_EXTS)}) or TIFF stack")
        if src.kind == "frames":
            if not src.frames:
                src.frames = list_frames(src.path)
                if not src.frames:
                    raise BadFile(src.path, f"no image frames ({' '.join(IMAGE_EXTS)}) directly in this "
                                             f"folder (subfolders such as F0/ are not read)")
            for f in src.frames:
                if not f.is_file():
                    raise BadFile(f, "does not exist")
        if self.cache_dir is None:
            self._light_check(src, pool)
            return
        name = re.sub(r"[^\w.-]", "_", src.path.name)[:60]
        src.cache_file = self.cache_dir / f"{name}-{self._cache_key(src)}.npy"
        if src.cache_file.exists():
            try:
                arr = np.load(src.cache_file, mmap_mode="r")
                if arr.ndim == 3 and arr.shape[1:] == (self.image_size, self.image_size) and arr.shape[0] > 0:
                    src.n, src.max_value = arr.shape[0], float(np.iinfo(arr.dtype).max)
                    return
            except (ValueError, OSError, EOFError):
                pass  # damaged cache file: decode again
        arr = self._decode_all(src, pool)
        tmp = self.cache_dir / f".{src.cache_file.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
            os.replace(tmp, src.cache_file)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise InputError(f"cannot write the frame cache in {self.cache_dir} ({e.strerror}); pass --cache_dir "
                            f"with a writable folder, or --cache_dir off") from None
        src.n, src.max_value = arr.shape[0], float(np.iinfo(arr.dtype).max)

    def _cache_key(self, src):
        files = src.frames if src.kind == "frames" else [src.path]
        h = hashlib.sha1(f"v{_CACHE_VERSION}|{self.image_size}|{src.kind}".encode())
        for f in files:
            st = f.stat()
            h.update(f"|{f}|{st.st_mtime_ns}|{st.st_size}".encode())
        return h.hexdigest()[:16]

    def _decode_all(self, src, pool):
        if src.kind == "video":
            return decode_video(src.path, self.image_size)
        if src.kind == "tiff":
            return decode_tiff(src.path, self.image_size)
        return stack_frames(list(pool.map(lambda f: decode_image(f, self.image_size), src.frames)))

    def _light_check(self, src, pool):
        """Without a cache: check that every frame decodes, so bad rows show up at build time."""
        if src.kind == "video":
            src.n, src.max_value = count_video_frames(src.path), 255.0
        elif src.kind == "tiff":
            arr = decode_tiff(src.path, self.image_size)
            src.n, src.max_value = arr.shape[0], float(np.iinfo(arr.dtype).max)
        else:
            first = decode_image(src.frames[0], self.image_size)
            list(pool.map(probe_image, src.frames[1:]))
            src.n, src.max_value = len(src.frames), float(np.iinfo(first.dtype).max)

    def _read(self, row, positions):
        """Integer frames (T, H, W) of the row's source at `positions`."""
        src = self.sources[row.source]
        try:
            if src.cache_file is not None:
                return np.asarray(np.load(src.cache_file, mmap_mode="r")[positions])
            if src.kind == "video":
                return decode_video(src.path, self.image_size, positions)
            if src.kind == "tiff":
                return decode_tiff(src.path, self.image_size)[positions]
            decoded = {int(p): decode_image(src.frames[int(p)], self.image_size) for p in np.unique(positions)}
            return stack_frames([decoded[int(p)] for p in positions])
        except BadFile as e:
            raise self._err(row, str(e)) from None
        except OSError as e:
            raise self._err(row, f"{src.cache_file or src.path}: {e}") from None

    # ---- annotations
    def _attach_annotations(self, ann_dir):
        """Per-frame phase names and hours from `<embryo>_phases.csv` / `<embryo>_timeElapsed.csv`."""
        if not ann_dir.is_dir():
            raise InputError(f"{ann_dir}: annotations folder not found")
        phase_files = {p.name[:-len("_phases.csv")]: p for p in ann_dir.rglob("*_phases.csv")}
        time_files = {p.name[:-len("_timeElapsed.csv")]: p for p in ann_dir.rglob("*_timeElapsed.csv")}
        matched = 0
        for r in self.rows:
            src = self.sources[r.source]
            runs = run_numbers(src.frames) if src.kind == "frames" else np.arange(1, src.n + 1)
            r.phase = np.full(len(runs), "", dtype=object)
            r.hours = np.full(len(runs), np.nan, dtype=np.float32)
            key = r.cell_id
            if key in phase_files:
                matched += 1
                for name, first, last in _read_phases(phase_files[key]):
                    r.phase[(runs >= first) & (runs <= last)] = name
            if key in time_files:
                matched += 1
                hours = _read_times(time_files[key])
                r.hours = np.array([hours.get(int(k), np.nan) for k in runs], dtype=np.float32)
        if not matched:
            log.warning("%s: no *_phases.csv or *_timeElapsed.csv matches an embryo id of %s",
                        ann_dir, self.index_csv)

    # ---- items
    def set_epoch(self, epoch):
        """Set the epoch that seeds sampling and augmentation (seen by persistent workers too)."""
        self._epoch[0] = int(epoch)

    def __len__(self):
        return len(self.rows)

    def recording(self, i):
        """Key of row i's recording (the absolute source path): clip rows of one recording share it."""
        return self.rows[i].source

    def num_frames(self, i):
        """Number of frames in row i's whole recording."""
        return self.sources[self.rows[i].source].n

    def metadata(self, i):
        """Row i's CSV columns (except `paths`) plus embryo/patient ids, label and split."""
        r = self.rows[i]
        meta = dict(r.extra)
        meta.update(cell_id=r.cell_id, patient_id=r.patient_id, label=r.label, split=r.split)
        meta.setdefault("embryo_id", r.cell_id)
        return meta

    def load_frames(self, i, frame_indices=None):
        """Row i's recording (or the given positions), normalised over those frames: float32 (N, 1, H, W)."""
        row = self.rows[i]
        n = self.num_frames(i)
        positions = np.arange(n) if frame_indices is None else np.asarray(frame_indices, dtype=np.int64)
        if positions.size == 0 or positions.min() < 0 or positions.max() >= n:
            raise IndexError(f"frame_indices must lie in [0, {n}) for row {i}")
        frames = self._read(row, positions)
        return normalize_frames(frames, self.normalize, self.sources[row.source].max_value)[:, None]

    def annotations(self, i, frame_indices=None):
        """(hours float32 (N,) NaN unknown, phase names (N,) '' unknown) of row i's frames."""
        row = self.rows[i]
        positions = np.arange(self.num_frames(i)) if frame_indices is None else np.asarray(frame_indices, np.int64)
        if row.hours is None:
            return np.full(len(positions), np.nan, np.float32), np.full(len(positions), "", dtype=object)
        return row.hours[positions], row.phase[positions]

    def _positions(self, row, n, rng):
        """Frame positions (T,) for one clip; rng is None in eval (deterministic)."""
        t = self.seq_len
        if row.positions is not None:
            p = row.positions
            return p if len(p) == t else p[np.round(np.linspace(0, len(p) - 1, t)).astype(np.int64)]
        if self.sampling == "window" and n >= t:
            start = (n - t) // 2 if rng is None else int(rng.integers(0, n - t + 1))
            return np.arange(start, start + t, dtype=np.int64)
        if rng is None or self.sampling == "window":
            return np.round(np.linspace(0, n - 1, t)).astype(np.int64)
        edges = np.linspace(0, n, t + 1)
        lo = np.floor(edges[:-1])
        hi = np.maximum(lo + 1, np.floor(edges[1:]))
        return np.minimum(lo + np.floor(rng.random(t) * (hi - lo)), n - 1).astype(np.int64)

    def __getitem__(self, i):
        row = self.rows[i]
        src = self.sources[row.source]
        rng = np.random.default_rng([self.seed, int(self._epoch[0]), i]) if self.training else None
        positions = self._positions(row, src.n, rng)
        frames = self._read(row, positions)  # (T, H, W) integer
        jitter = self.training and self.augment
        if jitter:
            frames = _rotate_flip(frames, rng)
        video = normalize_frames(frames, self.normalize, src.max_value)
        if jitter:
            video = _photometric(video, rng)
        item = {"video": torch.from_numpy(np.ascontiguousarray(video[:, None], dtype=np.float32)),
                "label": row.label, "cell_id": row.cell_id,
                "frame_indices": torch.from_numpy(positions.astype(np.int64))}
        if self.has_annotations:
            item["hours"] = torch.from_numpy(row.hours[positions].astype(np.float32))
            item["phase"] = [str(p) for p in row.phase[positions]]
            item["phase_index"] = torch.tensor([PHASES.index(p) if p in PHASES else -1 for p in item["phase"]])
        return item


def _read_phases(path):
    """(phase, first_run, last_run) rows of a `<embryo>_phases.csv` (header optional)."""
    try:
        df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        if df.shape[1] < 3:
            raise ValueError("fewer than 3 columns")
        if df.iloc[0, 0].strip().lower() == "phase":
            df = df.iloc[1:]
        return [(str(a).strip(), int(b), int(c)) for a, b, c in df.iloc[:, :3].itertuples(index=False)]
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyInputError) as e:
        raise InputError(f"{path}: expected rows 'phase,first_frame,last_frame' with integer RUN numbers "
                        f"({e})") from None


def _read_times(path):
    """{RUN number: hours} from a `<embryo>_timeElapsed.csv` (`frame_index,time`)."""
    try:
        df = pd.read_csv(path)
        if not {"frame_index", "time"} <= set(df.columns):
            df = pd.read_csv(path, header=None).iloc[:, :2]
            df.columns = ["frame_index", "time"]
        return {int(k): float(v) for k, v in zip(df["frame_index"], df["time"], strict=True)}
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyInputError) as e:
        raise InputError(f"{path}: expected columns 'frame_index,time' (RUN number, hours) ({e})") from None


def _rotate_flip(frames, rng):
    """One random rotation (any angle) and flips, the same for every frame: (T, H, W)."""
    angle = rng.uniform(0.0, 360.0)
    flip_h, flip_v = rng.random(2) < 0.5
    h, w = frames.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    out = np.stack([cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                    for f in frames])
    if flip_h:
        out = out[:, :, ::-1]
    if flip_v:
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out)


def _photometric(video, rng):
    """Mild gamma, contrast and brightness jitter on a [0, 1] clip (T, H, W)."""
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    video = video ** gamma
    mean = float(video.mean())
    return np.clip((video - mean) * contrast + mean + brightness, 0.0, 1.0).astype(np.float32)


def add_data_args(parser):
    """Data flags shared by train.py and verify_data_connection.py."""
    g = parser.add_argument_group("data")
    g.add_argument("--index_csv", type=str, default="index.csv",
                   help="index.csv with video rows (path,...) or clip rows (cell_id,start_idx,paths) "
                        "(default: %(default)s)")
    g.add_argument("--seq_len", type=int, default=20, help="frames per clip (default: %(default)s)")
    g.add_argument("--sampling", type=str, default="uniform", choices=SAMPLINGS,
                   help="uniform: frames spread over the whole recording; window: contiguous frames "
                        "(default: %(default)s)")
    g.add_argument("--normalize", type=str, default="minmax01", choices=NORMALIZATIONS,
                   help="minmax01: per-clip 1st-99th percentile to [0,1]; none: x/255 (x/65535 for 16-bit); "
                        "zscore: per-clip z-score, +-3 std mapped to [0,1] (default: %(default)s)")
    g.add_argument("--augment", action="store_true",
                   help="random rotation, flips and brightness/contrast/gamma in training (default: off)")
    g.add_argument("--cache_dir", type=str, default="auto",
                   help="folder for the decoded-frame cache (each source decoded once, then memory-mapped); "
                        "auto = .ivf_cache beside index.csv, off = decode on every read (default: %(default)s)")
    g.add_argument("--val_fraction", type=float, default=0.2,
                   help="fraction of patients in val when index.csv has no split column (default: %(default)s)")
    g.add_argument("--skip_bad", action="store_true",
                   help="skip unreadable rows with a warning instead of stopping (default: off)")
    g.add_argument("--num_workers", type=int, default=2, help="DataLoader workers (default: %(default)s)")
    g.add_argument("--annotations_dir", type=str, default=None,
                   help="folder searched for <embryo>_phases.csv and <embryo>_timeElapsed.csv "
                        "(default: %(default)s = none)")
    return parser

