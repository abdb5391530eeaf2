"""Reading index.csv: its two forms, labels, patient-grouped splits, recordings and developmental annotations.

No torch here. Relative paths resolve against the CSV's folder. Video rows: `path` (frame folder, video file,
or multi-page TIFF), optional `embryo_id`, `label` (0 empty well, 1 embryo, blank unknown), `patient_id`,
`split`, extra columns. Clip rows: `cell_id,start_idx,paths` with `|`-joined frame paths in time order.
Annotations in the public Gomez et al. form: `<embryo>_phases.csv` (phase,first_frame,last_frame in RUN
numbers) and `<embryo>_timeElapsed.csv` (frame_index,time in hours).
"""
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cli import InputError, Stopped, StopSignal, stop_exit_code
from frames_io import BadFile, FrameStore, Recording, natural_key, patient_of, recording_kind, run_numbers

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Row:
    """One row of index.csv, with its recording key and (once attached) per-frame annotations."""

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


def parse_label(value, where: str) -> int:
    """A label cell as a class number; blank = -1 (unknown)."""
    value = str(value).strip()
    if value == "":
        return -1
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or number < -1:
        raise InputError(f"{where}: label {value!r} is not a class number "
                         f"(use 0 for an empty well, 1 for an embryo, blank or -1 for unknown)")
    return int(number)


def read_index(index_csv: Path) -> tuple[list[Row], list[str], str]:
    """The rows of an index.csv, its columns, and its form ("videos" or "clips"); InputError naming the line."""
    if not index_csv.is_file():
        raise InputError(f"{index_csv}: index CSV not found; build one with build_index.py")
    try:
        df = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{index_csv}: cannot parse CSV ({str(e).splitlines()[0]})") from e
    df.columns = [c.strip() for c in df.columns]
    if "paths" in df.columns:
        form = "clips"
    elif "path" in df.columns:
        form = "videos"
    else:
        raise InputError(f"{index_csv}: no 'path' column (video rows) or 'paths' column "
                        f"(clip rows); columns are {list(df.columns)}")
    base = index_csv.parent
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        if form == "videos":
            value = rec["path"].strip()
            if not value:
                raise InputError(f"{index_csv} line {line}: empty 'path'")
            path = base / value
            cell_id = rec.get("embryo_id", "").strip() or (path.name if path.is_dir() else path.stem)
            files = [path]
        else:
            files = [base / p.strip() for p in rec["paths"].split("|") if p.strip()]
            if not files:
                raise InputError(f"{index_csv} line {line}: empty 'paths'")
            cell_id = rec.get("cell_id", "").strip() or files[0].parent.name
        label = parse_label(rec.get("label", ""), f"{index_csv} line {line} ({cell_id})")
        patient = rec.get("patient_id", "").strip() or patient_of(cell_id)
        extra = {k: _plain(v) for k, v in rec.items() if k != "paths"}
        rows.append(Row(line, cell_id, label, patient, rec.get("split", "").strip().lower(), extra, files))
    if not rows:
        raise InputError(f"{index_csv}: no rows")
    return rows, list(df.columns), form


def assign_splits(rows: list[Row], columns: list[str], index_csv: Path, val_fraction: float, seed: int):
    """Use the split column where it is filled; other rows get a seeded patient-grouped train/val split."""
    for r in rows:
        if r.split and r.split not in SPLITS:
            raise InputError(f"{index_csv} line {r.line} ({r.cell_id}): split {r.split!r} is not one of {SPLITS}")
    unassigned = [r for r in rows if not r.split]
    if unassigned and "split" in columns:
        log.warning("%s: %d rows have a blank split; they get a seeded patient-grouped train/val split",
                    index_csv, len(unassigned))
    known = {r.patient_id: r.split for r in rows if r.split}  # a patient keeps the side it has
    patients = sorted({r.patient_id for r in unassigned} - set(known))
    order = np.random.default_rng(seed).permutation(len(patients))
    n_val = int(round(val_fraction * len(patients)))
    if val_fraction > 0 and len(patients) > 1:
        n_val = min(max(n_val, 1), len(patients) - 1)
    val = {patients[k] for k in order[:n_val]}
    for r in unassigned:
        r.split = known.get(r.patient_id) or ("val" if r.patient_id in val else "train")


def group_recordings(rows: list[Row], form: str) -> dict[str, Recording]:
    """Group rows by recording; clip rows of one folder share one recording."""
    sources, clip_frames = {}, {}
    for r in rows:
        if form == "videos":
            path = Path(os.path.abspath(r.files[0]))
            key = str(path)
            if key not in sources:
                sources[key] = Recording(recording_kind(path), path)
        else:
            files = [Path(os.path.abspath(f)) for f in r.files]
            key = "clips:" + "|".join(sorted({str(f.parent) for f in files}))
            clip_frames.setdefault(key, set()).update(files)
            r.files = files
            sources.setdefault(key, Recording("frames", files[0].parent))
        r.source = key
    for key, files in clip_frames.items():
        sources[key].frames = sorted(files, key=lambda p: natural_key(str(p)))
    for r in rows:
        if form == "clips":
            pos = {f: i for i, f in enumerate(sources[r.source].frames)}
            r.positions = np.array([pos[f] for f in r.files], dtype=np.int64)
    return sources


def row_error(index_csv, row, msg: str) -> InputError:
    """The error of an index.csv row: names the file, the line and the embryo."""
    return InputError(f"{index_csv} line {row.line} ({row.cell_id}): {msg}")


def check_sources(rows: list, sources: dict, store: FrameStore, skip_bad: bool, stop: StopSignal | None,
                  index_csv) -> list:
    """The rows whose recordings can be read: every source is opened (with a cache, decoded into it once; later
    checks only stat the files; without, a fast reduced-resolution decode of every frame). An unreadable one is an
    InputError naming the row, or with skip_bad a warning line per row it drops (and a count); no usable row is
    still an error. A stop signal (`stop`, a cli.StopSignal) ends the checks between two sources (cli.Stopped)."""
    users = {}
    for r in rows:
        users.setdefault(r.source, []).append(r)
    bad_rows = 0
    desc = "decoding into cache" if store.cache_dir else "checking sources"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for key, src in tqdm(sources.items(), desc=desc, unit="source", leave=False, disable=None):
            if stop is not None and stop.received:
                raise Stopped(f"{stop.received} while the sources of {index_csv} were checked: nothing to save yet "
                              f"(the frame cache keeps what was decoded); exit {stop_exit_code(stop.received)}",
                              stop.received)
            try:
                store.prepare(src, pool)
            except BadFile as e:
                src.error = str(e)
                if not skip_bad:
                    raise row_error(index_csv, users[key][0], f"{e}; fix or remove the row, or pass --skip_bad") \
                        from None
                for r in users[key]:
                    log.warning("skipping %s line %d (%s): %s", index_csv, r.line, r.cell_id, e)
                    bad_rows += 1
    good = [r for r in rows if not sources[r.source].error]
    if bad_rows:
        log.warning("%s: skipped %d of %d rows with unreadable sources", index_csv, bad_rows, len(rows))
    if not good:
        raise InputError(f"{index_csv}: no usable rows (all {len(rows)} rows were skipped as unreadable)")
    return good


def attach_annotations(rows: list[Row], recordings: dict[str, Recording], ann_dir: Path, index_csv: Path):
    """Per-frame phase names and hours from `<embryo>_phases.csv` / `<embryo>_timeElapsed.csv`."""
    if not ann_dir.is_dir():
        raise InputError(f"{ann_dir}: annotations folder not found")
    phase_files = {p.name[:-len("_phases.csv")]: p for p in ann_dir.rglob("*_phases.csv")}
    time_files = {p.name[:-len("_timeElapsed.csv")]: p for p in ann_dir.rglob("*_timeElapsed.csv")}
    matched = 0
    for r in rows:
        src = recordings[r.source]
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
                    ann_dir, index_csv)


def _is_empty(path) -> bool:
    """A 0-byte or blank annotation file (an empty well): no phases or times for that embryo."""
    return not path.read_bytes().strip()


def _read_phases(path):
    """(phase, first_run, last_run) rows of a `<embryo>_phases.csv` (header optional; empty = none)."""
    if _is_empty(path):
        return []
    try:
        df = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        if df.shape[1] < 3:
            raise ValueError("fewer than 3 columns")
        if df.iloc[0, 0].strip().lower() == "phase":
            df = df.iloc[1:]
        return [(str(a).strip(), int(b), int(c)) for a, b, c in df.iloc[:, :3].itertuples(index=False)]
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: expected rows 'phase,first_frame,last_frame' with integer RUN numbers "
                        f"({e})") from None


def _read_times(path):
    """{RUN number: hours} from a `<embryo>_timeElapsed.csv` (`frame_index,time`; empty = none)."""
    if _is_empty(path):
        return {}
    try:
        df = pd.read_csv(path)
        if not {"frame_index", "time"} <= set(df.columns):
            df = pd.read_csv(path, header=None).iloc[:, :2]
            df.columns = ["frame_index", "time"]
        return {int(k): float(v) for k, v in zip(df["frame_index"], df["time"], strict=True)}
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: expected columns 'frame_index,time' (RUN number, hours) ({e})") from None


def split_of(index_csv: Path, val_fraction: float, seed: int) -> dict[str, str]:
    """Embryo id -> train/val as a training run on index_csv with this seed and fraction split it (assign_splits);
    an id on both sides counts as train, test rows are left out."""
    rows, columns, _ = read_index(index_csv)
    assign_splits(rows, columns, index_csv, val_fraction, seed)
    split = {r.cell_id: "val" for r in rows if r.split == "val"}
    return {**split, **{r.cell_id: "train" for r in rows if r.split == "train"}}
