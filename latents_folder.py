"""The latents folder that extract_latents.py writes and analyze_latents.py reads: what each mode's subfolder
(`trajectories/`, `clips/`) may hold, its info.json, the checks that a subfolder is whole and of one extraction and
that the two come from one checkpoint, and loading them (checked: widths, finite values, row counts). No torch.

info.json, written last into the staging folder (output_folder.py) before it is swapped in, names the checkpoint
(path, epoch, a sha256 of its weights), the extraction's id and every other file of the subfolder with its size,
with a sha256 for the files that are not trajectories (each trajectory .npz holds the extraction id itself).
"""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

import cli
from cli import CLIPS_DIR, LATENT_KEY, METADATA_CSV, PIXELS_KEY, TRAJECTORY_DIR, UNTRAINED_KEY, InputError
from index_csv import SPLITS

INFO_JSON = "info.json"
EXTRACTION_KEY = "extraction_id"  # the array in every trajectory .npz naming the extraction that wrote it
# What a subfolder may hold, the file it always holds first (output_folder.OutputFolder replaces no other folder).
PATTERNS = {TRAJECTORY_DIR: (METADATA_CSV, "*.npz", INFO_JSON), CLIPS_DIR: (METADATA_CSV, "*.npy", INFO_JSON)}
MODES = {TRAJECTORY_DIR: "trajectory", CLIPS_DIR: "clips"}  # extract_latents.py --mode of each subfolder
TRAJECTORY_KEYS = (LATENT_KEY, "frame_indices", "hours", "phase")  # the arrays every trajectory file has
ROW_SPLITS = SPLITS + ("unseen",)  # a row's split in metadata.csv: the run's, test, or unseen by the run
CONTROL_KEYS = {"untrained": UNTRAINED_KEY, "pixels": PIXELS_KEY}  # control arrays, read only for the probes
CLIP_ARRAYS = ("z_last_pooled", "z_seq_pooled", "probs")  # the clips/ arrays the analysis reads (probs optional)
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)  # what a damaged .npy/.npz raises


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: Path, info: dict) -> dict:
    """Write folder/info.json: `info` (with extraction_id and weights_sha256) plus every other file of the folder
    with its size and, except trajectories, its sha256; returns what was written."""
    files = {p.name: {"bytes": p.stat().st_size, **({} if p.suffix == ".npz" else {"sha256": sha256(p)})}
             for p in sorted(folder.iterdir()) if p.name != INFO_JSON}
    info = {**info, "files": files}
    cli.write_json(folder / INFO_JSON, info)
    return info


def describe(info: dict) -> str:
    """The checkpoint and extraction of an info.json, in words."""
    return (f"extraction {str(info.get(EXTRACTION_KEY))[:8]} of {info.get('checkpoint')} (epoch {info.get('epoch')}, "
            f"weights {str(info.get('weights_sha256'))[:12]})")


def read_info(folder: Path) -> dict:
    """folder's info.json, checked against the folder: every file listed, none more, the same sizes, and the same
    sha256 for the files the analysis reads. InputError (one line, naming the file) otherwise."""
    path, again = folder / INFO_JSON, f"run extract_latents.py --mode {MODES[folder.name]} again"
    try:
        info = json.loads(path.read_text())
        files, _ = info["files"], info[EXTRACTION_KEY]
        sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
    except FileNotFoundError:
        raise InputError(f"{path} is missing: {folder} is incomplete or from an older extract_latents.py; "
                         f"{again}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        reason = "from an older extract_latents.py" if isinstance(err, KeyError) else type(err).__name__
        raise InputError(f"{path} cannot be used ({reason}); {again}") from None
    present = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != INFO_JSON}
    for name in sorted(set(present) | set(sizes)):
        if name not in sizes:
            raise InputError(f"{folder / name} is not a file of {describe(info)} that info.json lists: files of two "
                             f"extractions are mixed; {again}")
        if present.get(name) != sizes[name]:
            state = "missing" if name not in present else f"{present[name]} bytes, not {sizes[name]}"
            raise InputError(f"{folder / name} is {state} as {describe(info)} wrote it; {again}")
        read = name == METADATA_CSV or name.removesuffix(".npy") in CLIP_ARRAYS
        if read and "sha256" in files[name] and sha256(folder / name) != files[name]["sha256"]:
            raise InputError(f"{folder / name} is not the file {describe(info)} wrote (another sha256); {again}")
    return info


def check_one_checkpoint(latents: Path, infos: dict[str, dict]):
    """InputError naming both when trajectories/ and clips/ come from different checkpoint weights."""
    traj, clips = infos[TRAJECTORY_DIR], infos[CLIPS_DIR]
    if traj.get("weights_sha256") != clips.get("weights_sha256"):
        raise InputError(f"{latents}: {TRAJECTORY_DIR}/ is {describe(traj)} but {CLIPS_DIR}/ is {describe(clips)}; "
                         "extract both from one checkpoint, or into separate --out folders")


def _split_field(value, dtype):
    """'a|b|c' -> array; blank / NaN -> empty array."""
    if not isinstance(value, str) or value == "":
        return np.array([], dtype=dtype)
    return np.array(value.split("|"), dtype=dtype)


def read_metadata(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """An extraction's metadata.csv (blank cells = NaN), checked for the columns the analysis needs."""
    try:
        meta = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise InputError(f"{path}: cannot parse CSV ({reason}); re-run extract_latents.py") from None
    missing = [c for c in required if c not in meta.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}; it must come from extract_latents.py")
    return meta


def _check_array(path: Path, name: str, values: np.ndarray, shape: tuple, finite: bool = True):
    """InputError unless values has `shape` (None: any length there) and, with finite, only finite values."""
    if values.ndim != len(shape) or any(want not in (None, got) for got, want in zip(values.shape, shape, strict=True)):
        expected = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise InputError(f"{path}: {name} has shape {values.shape}, expected {expected}; re-run extract_latents.py")
    if finite and values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InputError(f"{path}: {name} holds NaN or infinite values; re-run extract_latents.py")


def read_trajectory(path: Path, row: pd.Series, extraction: str | None, first: dict | None) -> dict:
    """One trajectory file, checked: its arrays, the extraction that wrote it, the width of the `first` one's z,
    finite values (hours may be NaN: unknown)."""
    with np.load(path) as data:
        if not set(TRAJECTORY_KEYS) <= set(data.files):
            raise InputError(f"{path}: needs arrays {', '.join(TRAJECTORY_KEYS)}; re-run extract_latents.py")
        written_by = str(data[EXTRACTION_KEY]) if EXTRACTION_KEY in data.files else "unknown"
        if extraction is not None and written_by != extraction:
            raise InputError(f"{path} was written by extraction {written_by[:8]}, not {extraction[:8]} that info.json "
                             "describes: files of two extractions are mixed; run extract_latents.py --mode trajectory "
                             "again")
        z = data[LATENT_KEY]
        _check_array(path, LATENT_KEY, z, (None, None))
        if first is not None and z.shape[1] != first["z"].shape[1]:
            raise InputError(f"{path}: z has {z.shape[1]} values a frame but {first['path'].name} has "
                             f"{first['z'].shape[1]} (latents pooled two ways?); re-run extract_latents.py")
        for key in TRAJECTORY_KEYS[1:]:
            _check_array(path, key, data[key], (len(z),), finite=key != "hours")
        controls = {name for name, key in CONTROL_KEYS.items() if key in data.files}
        for name in controls:  # checked here, read again by the probes
            width = z.shape[1] if name == "untrained" else None
            _check_array(path, CONTROL_KEYS[name], data[CONTROL_KEYS[name]], (len(z), width))
        return {"name": path.stem, "z": z.astype(np.float64), "frame_indices": data["frame_indices"],
                "hours": data["hours"].astype(np.float64), "phase": data["phase"].astype(str), "meta": row.to_dict(),
                "path": path, "start": 0, "controls": controls}


def load_trajectories(latents_dir: Path, extraction: str | None = None) -> list[dict]:
    """Per-embryo trajectories: dicts with name, z (n, C), frame_indices, hours (NaN = unknown), phase, meta;
    path, start (first row used) and controls (the control arrays the file holds, read when needed). Every file
    has the same width C, finite values and (given `extraction`) that extraction's id; else InputError."""
    folder = latents_dir / TRAJECTORY_DIR
    meta = read_metadata(folder / METADATA_CSV, ("file", "cell_id", "label"))
    trajectories = []
    for _, row in meta.iterrows():
        path = folder / str(row["file"])
        if not path.is_file():
            raise InputError(f"{folder / METADATA_CSV}: row for {row['cell_id']} names {path}, which is missing; "
                             "re-run extract_latents.py --mode trajectory")
        try:
            trajectories.append(read_trajectory(path, row, extraction, trajectories[0] if trajectories else None))
        except InputError:
            raise
        except READ_ERRORS as err:
            raise InputError(f"{path}: cannot be read ({type(err).__name__}); re-run extract_latents.py") from None
    return trajectories


def load_clips(latents_dir: Path) -> dict:
    """Clip-level latents: meta DataFrame, z_last (N, P), z_seq (N, T, P), probs (N, K) or None; one row per
    metadata row, finite, else InputError."""
    folder = latents_dir / CLIPS_DIR
    meta = read_metadata(folder / METADATA_CSV, ("cell_id", "label", "frame_indices"))
    arrays = {}
    for name, shape in zip(CLIP_ARRAYS, ((len(meta), None), (len(meta), None, None), (len(meta), None)), strict=True):
        path = folder / f"{name}.npy"
        if not path.is_file():
            if name == "probs":
                continue
            raise InputError(f"{path} is missing; re-run extract_latents.py --mode clips")
        try:
            arrays[name] = np.load(path)
        except READ_ERRORS as err:
            raise InputError(f"{path}: cannot be read ({type(err).__name__}); re-run extract_latents.py") from None
        _check_array(path, name, arrays[name], shape)
    if arrays["z_seq_pooled"].shape[2] != arrays["z_last_pooled"].shape[1]:
        raise InputError(f"{folder}: z_seq_pooled and z_last_pooled differ in width; re-run extract_latents.py")
    return {"meta": meta, "z_last": arrays["z_last_pooled"].astype(np.float64),
            "z_seq": arrays["z_seq_pooled"].astype(np.float64),
            "probs": arrays["probs"].astype(np.float64) if "probs" in arrays else None}


def trajectories_from_clips(clips: dict) -> list[dict]:
    """One short trajectory per clip (its pooled z_seq) when no whole-recording trajectories exist."""
    trajectories = []
    for i, row in clips["meta"].iterrows():
        z = clips["z_seq"][i]
        hours = _split_field(row.get("hours"), np.float64)
        phase = _split_field(row.get("phase"), str)
        trajectories.append({
            "name": f"clip{i:05d}_{row['cell_id']}", "z": z,
            "frame_indices": _split_field(row["frame_indices"], np.int64),
            "hours": hours if len(hours) == len(z) else np.full(len(z), np.nan),
            "phase": phase if len(phase) == len(z) else np.full(len(z), "", dtype=str),
            "meta": row.to_dict(), "path": None, "start": 0, "controls": set(),
        })
    return trajectories
