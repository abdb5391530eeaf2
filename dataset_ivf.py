"""Embryo time-lapse clips from index.csv: reading the index, grouped splits, annotations, sampling,
normalisation and augmentation.

index.csv comes in two forms (relative paths resolve against the CSV's folder):
- video rows: `path` (frame folder, video file .avi/.mp4/.mov/.mkv, or multi-page TIFF), optional
  `embryo_id`, `label` (0 empty well, 1 embryo, blank unknown), `patient_id`, `split`, extra columns;
- clip rows: `cell_id,start_idx,paths` with `|`-joined frame paths in time order.
Frames are decoded by frames_io.FrameStore (grayscale, centre-cropped to a square, resized to
`image_size`, cached on disk by default).
"""
import logging
import os
import signal
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

import cli
from cli import DEFAULT_SEED, FLAG_ALIASES, InputError, StopSignal, add_num_workers_arg, atomic_write
from frames_io import PHASES, BadFile, FrameStore
from index_csv import SPLITS, assign_splits, attach_annotations, check_sources, group_recordings, read_index, row_error

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "window", "span")
# The DataConfig fields whose extract_latents.py flags default to the training run's (from its checkpoint).
INHERITED_FIELDS = ("seq_len", "sampling", "normalize", "annotations_dir", "cache_dir")
NORMALIZATIONS = ("percentile", "none", "zscore")
NORMALIZE_ALIASES = FLAG_ALIASES["normalize"]  # the name earlier versions (and their checkpoints) used
MAX_CLIPS_PER_RECORDING = 1000


@dataclass
class DataConfig:
    """How clips are made from the recordings; stored in checkpoints beside model_config."""

    seq_len: int = 20
    image_size: int = 128
    sampling: str = "uniform"
    normalize: str = "percentile"
    augment: bool = False
    cache_dir: str | None = "auto"
    skip_bad: bool = False
    annotations_dir: str | None = None
    val_fraction: float = 0.2
    seed: int = DEFAULT_SEED  # seeds the split and, with the epoch, sampling and augmentation
    # Training clips per recording and epoch (video rows only; clip rows and eval keep one per row). 20 makes an
    # epoch of the public set (~560 training wells) about as long as the 13.3k sliding windows of the clip-row form.
    clips_per_recording: int = 20
    two_views: bool = False  # training items also hold `view`: the clip as another well would record it


    def __post_init__(self):
        self.normalize = NORMALIZE_ALIASES.get(self.normalize, self.normalize)
        if self.sampling not in SAMPLINGS:
            raise InputError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.seq_len < 1 or self.image_size < 1:
            raise InputError(f"seq_len and image_size must be positive, got {self.seq_len} and {self.image_size}")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 1 <= self.clips_per_recording <= MAX_CLIPS_PER_RECORDING:  # an epoch's order is held in memory
            raise InputError(f"--clips_per_recording must be in [1, {MAX_CLIPS_PER_RECORDING}], got "
                             f"{self.clips_per_recording}; more epochs give more clips")
        self.cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        self.annotations_dir = None if self.annotations_dir is None else str(self.annotations_dir)

    @classmethod
    def from_args(cls, args) -> "DataConfig":
        """The data flags of add_data_args (and --image_size, --seed); two views when the loss's two-view term is on
        (--contrast_weight above 0)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name != "two_views"},
                   two_views=getattr(args, "contrast_weight", 0.0) > 0)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "DataConfig":
        """The training run's data config; checkpoints written before data_config existed keep theirs in args."""
        stored = checkpoint.get("data_config") or checkpoint.get("args") or {}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_frames(frames, mode, max_value):
    """Integer frames (N, H, W) -> float32 in [0, 1]. "percentile" (formerly "minmax01") stretches the frames' 1st-99th
    percentile to [0, 1] and clips; "none" divides by the source's full range (max_value: 255, or 65535 for 16-bit);
    "zscore" standardises, clips to +-3 std and maps linearly to [0, 1] (0.5 = the mean) so that the model's
    sigmoid output can still reconstruct it."""
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


def clip_positions(given: np.ndarray | None, n: int, seq_len: int, sampling: str, clips: int,
                   rng: np.random.Generator | None, k: int = 0) -> np.ndarray:
    """Frame positions (T,) of clip k of a row's `clips` (K) clips in a recording of n frames; rng (the row's, the
    same for its K clips) is None in eval (deterministic). With K = 1 the draws are those of one clip per row.
    given: a clip row's own positions, resampled evenly to seq_len. "uniform" spreads seq_len frames over the
    whole recording (jittered per segment in training); "window" takes contiguous frames (centred in eval, a
    random start in training); "span" spreads them over a random stretch of the recording in training (uniform
    in eval), so that a clip's step no longer tells how much time passed. The K clips of a row differ: uniform
    gives each clip another frame of every segment at least K frames wide; window spreads the K starts evenly
    over the recording with one random shift (distinct while there are at least K starts); span draws a stretch
    per clip. Each clip is still uniform alone. Recordings shorter than seq_len repeat frames."""
    t = seq_len
    if sampling == "span" and rng is not None and n > t:  # a random stretch, log-uniform from seq_len frames to all
        lengths = np.exp(rng.uniform(np.log(t), np.log(n), size=clips))  # one stretch per clip of the row
        length = int(round(lengths[k]))
        start = int(rng.random(clips)[k] * (n - length + 1))
        return start + clip_positions(None, length, t, "uniform", 1, rng)
    if given is not None:
        return given if len(given) == t else given[np.round(np.linspace(0, len(given) - 1, t)).astype(np.int64)]
    if sampling == "window" and n >= t:
        if rng is None:
            start = (n - t) // 2
        elif clips == 1:
            start = int(rng.integers(0, n - t + 1))
        else:  # K starts evenly spaced over the n - t + 1 possible ones (one random shift), in a random order
            start = int((rng.permutation(clips)[k] + rng.random()) / clips * (n - t + 1))
        return np.arange(start, start + t, dtype=np.int64)
    if rng is None or sampling == "window":
        return np.round(np.linspace(0, n - 1, t)).astype(np.int64)
    edges = np.linspace(0, n, t + 1)
    lo = np.floor(edges[:-1])
    hi = np.maximum(lo + 1, np.floor(edges[1:]))
    u = rng.random(t)  # (T,) where in its segment each frame lies
    if clips > 1:  # clip k takes the k-th of K strata of every segment, in a random order per segment
        u = (rng.random((t, clips)).argsort(axis=1)[:, k] + u) / clips
    return np.minimum(lo + np.floor(u * (hi - lo)), n - 1).astype(np.int64)


class IVFSequenceDataset(Dataset):
    """Clips of `seq_len` frames from the rows of an index.csv.

    Settings come from a DataConfig (`config`, with keyword overrides of its fields).

    Items: `clips_per_row` (K) per row, item i being clip i % K of row i // K: K = `clips_per_recording` for
    a training dataset of video rows, else 1 (clip rows, eval). Methods taking `i` below index rows, not items.
    Each item: `video` float32 (T, 1, H, W) in [0, 1]; `label` int (-1 unknown); `cell_id` str;
    `frame_indices` int64 (T,) positions in the source's natural-sorted frame list (clip rows:
    among the frames the index lists for that folder); with `annotations_dir` also `hours`
    float32 (T,) (NaN where unknown), `phase` list[str] (T,) ('' where no phase applies) and
    `phase_index` int64 (T,) (index into PHASES, -1 none). The default collate works (`phase`
    comes out as T tuples of B names).

    Frames are drawn by clip_positions (`sampling`), normalised per clip by normalize_frames (`normalize`),
    and in training with `augment` jittered by augment_clip. Clip rows with more or fewer than seq_len frames
    are resampled evenly (one warning).
    split: None = all rows; "train"/"val"/"test" use the `split` column when present, else a
    seeded split grouped by patient (`patient_id`, else the embryo id without `-<n>`), with
    `val_fraction` of patients in val.
    Randomness depends only on (seed, epoch, index); call `set_epoch` every epoch.
    cache_dir: a folder, "auto" (`.ivf_cache` beside index.csv) or None/"off" (no cache). Sources are checked
    when the dataset is built (check_sources; `skip_bad`, `stop`).
    """

    def __init__(self, index_csv, config: DataConfig | None = None, *, split=None, training=None,
                 stop: StopSignal | None = None, **overrides):
        self.config = replace(config or DataConfig(), **overrides)
        if split is not None and split not in SPLITS:
            raise InputError(f"split must be None or one of {SPLITS}, got {split!r}")
        self.index_csv = Path(index_csv)
        self.seq_len, self.image_size = self.config.seq_len, self.config.image_size
        self.sampling, self.normalize, self.seed = self.config.sampling, self.config.normalize, self.config.seed
        self.split = split
        self.training = (split == "train") if training is None else bool(training)
        self.augment = self.config.augment
        self.has_annotations = self.config.annotations_dir is not None
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        rows, columns, form = read_index(self.index_csv)
        self.form = form
        self.clips_per_row = self.config.clips_per_recording if self.training and form == "videos" else 1
        if split == "test" and "split" not in columns:
            raise InputError(f"{self.index_csv}: a test split needs a 'split' column")
        assign_splits(rows, columns, self.index_csv, self.config.val_fraction, self.seed)
        rows = [r for r in rows if split is None or r.split == split]
        if not rows:
            raise InputError(f"{self.index_csv}: no rows in split {split!r}; check the split column "
                             f"or --val_fraction")
        self.sources = group_recordings(rows, form)
        self.store = FrameStore(self.image_size, resolve_cache_dir(self.config.cache_dir, self.index_csv))
        self.rows = check_sources(rows, self.sources, self.store, self.config.skip_bad, stop, self.index_csv)
        self.skipped = [r for r in rows if self.sources[r.source].error]  # unreadable rows --skip_bad dropped
        n_resampled = sum(r.positions is not None and len(r.positions) != self.seq_len for r in self.rows)
        if n_resampled:
            log.warning("%s: %d clip rows do not have seq_len=%d frames; they are resampled evenly",
                        self.index_csv, n_resampled, self.seq_len)
        if self.has_annotations:
            attach_annotations(self.rows, self.sources, Path(self.config.annotations_dir), self.index_csv)

    def _read(self, row, positions):
        """Integer frames (T, H, W) of the row's recording at `positions`."""
        src = self.sources[row.source]
        try:
            return self.store.read(src, positions)
        except BadFile as e:
            raise row_error(self.index_csv, row, str(e)) from None
        except OSError as e:
            raise row_error(self.index_csv, row, f"{src.cache_file or src.path}: {e}") from None

    def set_epoch(self, epoch):
        """Set the epoch that seeds sampling and augmentation (seen by persistent workers too)."""
        self._epoch[0] = int(epoch)

    def __len__(self):
        return len(self.rows) * self.clips_per_row

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

    def __getitem__(self, i):
        r, k = divmod(i, self.clips_per_row)
        row = self.rows[r]
        src = self.sources[row.source]
        epoch = int(self._epoch[0])
        rng = np.random.default_rng([self.seed, epoch, r]) if self.training else None
        positions = clip_positions(row.positions, src.n, self.seq_len, self.sampling, self.clips_per_row, rng, k)
        if self.training and self.clips_per_row > 1:  # the row's K clips share the draw above; each its own jitter
            rng = np.random.default_rng([self.seed, epoch, r, k + 1])  # k + 1: a trailing 0 would repeat [.., r]
        frames = self._read(row, positions)  # (T, H, W) integer
        if self.training and self.augment:
            video = augment_clip(frames, rng, self.normalize, src.max_value)
        else:
            video = normalize_frames(frames, self.normalize, src.max_value)
        item = {"video": torch.from_numpy(np.ascontiguousarray(video[:, None], dtype=np.float32)),
                "label": row.label, "cell_id": row.cell_id,
                "frame_indices": torch.from_numpy(positions.astype(np.int64)), "recording_frames": src.n}
        if self.training and self.config.two_views:  # its own draw: [seed, epoch, row, clip, 1] repeats no other
            view = nuisance_view(frames, np.random.default_rng([self.seed, epoch, r, k, 1]), self.normalize,
                                 src.max_value)
            item["view"] = torch.from_numpy(view[:, None])  # (T, 1, H, W)
        if self.has_annotations:
            item["hours"] = torch.from_numpy(row.hours[positions].astype(np.float32))
            item["phase"] = [str(p) for p in row.phase[positions]]
            item["phase_index"] = torch.tensor([PHASES.index(p) if p in PHASES else -1 for p in item["phase"]])
        return item


class ResumableSampler(Sampler):
    """DistributedSampler's order for (seed, epoch), optionally skipping the batches already done."""

    def __init__(self, dataset, world_size: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0):
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self):
        return len(self.inner) - self.skip


class ShieldedLoader(DataLoader):
    """A DataLoader whose workers no signal to the process group (Ctrl-C, `timeout`, a batch system) can kill: the stop
    signals are blocked while workers start (a fork inherits the mask); each then ignores them and leaves the group."""

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, worker_init_fn=leave_process_group, **kwargs)

    def __iter__(self):
        with cli.stop_signals_held():  # delivered to this process once the workers are sheltered
            return super().__iter__()


def make_loaders(train_ds, val_ds, batch_size: int, num_workers: int, world_size: int, rank: int, seed: int,
                 pin_memory: bool, drop_last: bool) -> tuple[DataLoader, DataLoader | None]:
    """train.py's ShieldedLoaders: training (a ResumableSampler: this rank's share of the (seed, epoch) order;
    drop_last for a static batch) and validation (every world_size-th clip from rank on)."""
    kw = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
              persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))
    train_loader = ShieldedLoader(train_ds, sampler=ResumableSampler(train_ds, world_size, rank, seed),
                                  drop_last=drop_last, **kw)
    val_loader = ShieldedLoader(val_ds, sampler=list(range(rank, len(val_ds), world_size)), **kw) \
        if val_ds is not None else None
    return train_loader, val_loader


def write_split_csv(path: Path, *datasets):
    """split.csv: every row of the datasets (None: left out) with its split, embryo and patient."""
    rows = [ds.metadata(i) for ds in datasets if ds is not None for i in range(len(ds.rows))]
    atomic_write(path, lambda f: f.write(pd.DataFrame(rows).to_csv(index=False).encode()))


def run_split(train_ds, val_ds) -> dict[str, str]:
    """Embryo id -> this run's split (an id on both sides: train), kept in its checkpoints for extraction."""
    split = {r.cell_id: "val" for r in (val_ds.rows if val_ds is not None else ())}
    return {**split, **{r.cell_id: "train" for r in train_ds.rows}}


def run_plan(train_ds, val_ds, steps_per_epoch: int, batch_size: int, world_size: int, num_epochs: int,
             warmup_steps: int, num_workers: int) -> str:
    """The line train.py prints before training: recordings, clips and steps of an epoch and of the run, and the
    loader workers of each process."""
    what = "recordings" if train_ds.form == "videos" else "clip rows"
    val = f"validation {len(val_ds)} clips (one per {what[:-1]})" if val_ds is not None else "no validation"
    processes = f" x {world_size} processes" if world_size > 1 else ""
    return (f"Run plan: {len(train_ds.rows)} training {what} x {train_ds.clips_per_row} clips = {len(train_ds)} clips "
            f"an epoch, {steps_per_epoch} steps an epoch (batch {batch_size}{processes}); {num_epochs} epochs = "
            f"{num_epochs * steps_per_epoch} steps, warm-up {warmup_steps} steps; {val}; {num_workers} loader workers"
            f"{' a process' if world_size > 1 else ''}")


def train_val_datasets(index_csv, config: DataConfig, stop=None, num_classes: int | None = None):
    """Train and val datasets (val when val_fraction > 0); labels checked against num_classes when the classifier is
    on; --clips_per_recording refused on clip rows. A stop signal (cli.StopSignal) ends the build with cli.Stopped."""
    train_ds = IVFSequenceDataset(index_csv, config, split="train", stop=stop)
    val_ds = IVFSequenceDataset(index_csv, config, split="val", augment=False, stop=stop) \
        if config.val_fraction > 0 else None
    if train_ds.form == "clips" and config.clips_per_recording != DataConfig.clips_per_recording:
        raise InputError(f"--clips_per_recording draws clips from video rows, but {index_csv} has clip rows (one "
                         f"clip each); drop the flag")
    if num_classes is not None:
        for row in (r for ds in (train_ds, val_ds) if ds is not None for r in ds.rows):
            if row.label >= num_classes:
                raise InputError(f"{index_csv} line {row.line} ({row.cell_id}): label {row.label} is not "
                                 f"below --num_classes {num_classes}")
    return train_ds, val_ds


def check_clips_per_recording(checkpoint: dict | None, path, train_ds):
    """A run continues with the epoch length it began with: another --clips_per_recording (runs from before the
    flag drew one clip per recording) would move the position inside the epoch and the schedule."""
    if checkpoint is None or train_ds.form != "videos":
        return
    stored = (checkpoint.get("data_config") or checkpoint.get("args") or {}).get("clips_per_recording", 1)
    if stored != train_ds.config.clips_per_recording:
        raise InputError(f"{path} was trained with --clips_per_recording {stored}, not "
                         f"{train_ds.config.clips_per_recording}; pass --clips_per_recording {stored} to continue "
                         f"it, or use a new --save_dir")


def leave_process_group(worker_id: int):
    """ShieldedLoader's worker init: ignore stop signals (dropping one held since the fork), leave the process group,
    then end on a SIGTERM (now only the main process's terminate() at exit, as torch's handler does) and unblock."""
    for s in cli.STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, cli.STOP_SIGNALS)


def augment_clip(frames, rng, normalize: str, max_value: int) -> np.ndarray:
    """A training clip's jitter: one random rotation (any angle) and random flips for all its integer frames (T, H, W),
    then normalize_frames, then mild gamma, contrast and brightness jitter: float32 (T, H, W) in [0, 1]."""
    return _photometric(normalize_frames(_rotate_flip(frames, rng), normalize, max_value), rng)


def nuisance_view(frames, rng, normalize: str, max_value: int) -> np.ndarray:
    """The clip as another well and microscope would record it, the same for all its integer frames (T, H, W):
    rotation (any angle), zoom (0.85-1.15), shift (up to 10% of the side), flips, focus blur (sigma up to 1.5 px),
    then normalize_frames, then gain and offset (contrast 0.7-1.3, brightness +-0.1) and gamma (0.7-1.4): float32
    (T, H, W) in [0, 1]."""
    h, w = frames.shape[1:]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rng.uniform(0.0, 360.0), rng.uniform(0.85, 1.15))
    m[:, 2] += rng.uniform(-0.1, 0.1, size=2) * (w, h)
    flip_h, flip_v = rng.random(2) < 0.5
    sigma = rng.uniform(0.0, 1.5)
    out = []
    for frame in frames:
        frame = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        out.append(cv2.GaussianBlur(frame, (0, 0), sigma) if sigma > 0.3 else frame)
    out = np.stack(out)[:, ::-1 if flip_v else 1, ::-1 if flip_h else 1]
    video = normalize_frames(np.ascontiguousarray(out), normalize, max_value)
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    video = video ** gamma
    mean = float(video.mean())
    video = (video - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-0.1, 0.1)
    return np.clip(video, 0.0, 1.0).astype(np.float32)


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


def add_data_args(parser, from_checkpoint: bool = False):
    """Data flags shared by train.py, verify_data_connection.py, bench.py and (from_checkpoint=True, where the
    clip settings default to the training run's) extract_latents.py. Defaults are DataConfig's."""
    default = DataConfig()

    def inherited(name: str, shown: str = ""):  # (default, help suffix) of a DataConfig field
        if from_checkpoint and name in INHERITED_FIELDS:
            return None, "(default: the checkpoint's)"
        return getattr(default, name), f"(default: {shown or getattr(default, name)})"

    g = parser.add_argument_group("data")
    g.add_argument("--index_csv", type=str, default="index.csv",
                   help="index.csv with video rows (path,...) or clip rows (cell_id,start_idx,paths) "
                        "(default: %(default)s)")
    value, note = inherited("seq_len")
    g.add_argument("--seq_len", type=int, default=value, help=f"frames per clip {note}")
    value, note = inherited("sampling")
    g.add_argument("--sampling", type=str, default=value, choices=SAMPLINGS,
                   help=f"uniform: frames spread over the whole recording; window: contiguous frames {note}")
    value, note = inherited("normalize")
    g.add_argument("--normalize", type=str, default=value, choices=NORMALIZATIONS + tuple(NORMALIZE_ALIASES),
                   help="percentile (also minmax01): per-clip 1st-99th percentile to [0,1]; none: x/255 (x/65535 "
                        f"for 16-bit); zscore: per-clip z-score, +-3 std mapped to [0,1] {note}")
    value, note = inherited("annotations_dir", "none")
    g.add_argument("--annotations_dir", type=str, default=value,
                   help=f"folder searched for <embryo>_phases.csv and <embryo>_timeElapsed.csv {note}")
    value, note = inherited("cache_dir")
    g.add_argument("--cache_dir", type=str, default=value,
                   help="folder for the decoded-frame cache (each source decoded once, then memory-mapped); "
                        f"auto = .ivf_cache beside index.csv, off = decode on every read {note}")
    if not from_checkpoint:
        g.add_argument("--augment", action="store_true",
                       help="random rotation, flips and brightness/contrast/gamma in training (default: off)")
        g.add_argument("--val_fraction", type=float, default=default.val_fraction,
                       help="fraction of patients in val when index.csv has no split column (default: %(default)s)")
        g.add_argument("--clips_per_recording", type=int, default=default.clips_per_recording,
                       help="training clips drawn from every recording (video rows) each epoch, at K distinct "
                            "positions; clip rows give one item per row, and validation and extraction one "
                            "deterministic clip per recording. The default makes an epoch of video rows about as "
                            "long as one of the clip-row form (default: %(default)s)")
    g.add_argument("--skip_bad", action="store_true",
                   help="skip unreadable rows with a warning instead of stopping (default: off)")
    add_num_workers_arg(g)
    return parser

