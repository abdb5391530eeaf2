"""Scan a dataset root (one frame folder, video or TIFF stack per embryo) and write index.csv.

`--mode videos` writes one row per embryo (`path,embryo_id,patient_id,n_frames,label,...`);
`--mode clips` writes `cell_id,start_idx,paths` windows of exactly `--seq_len` frames taken every
`--frame_step`-th frame, a new window every `--window_step` of those frames (frame folders only).
Paths are written relative to the output CSV's folder. Skipped entries are reported with a reason.
"""
import os
import sys
from pathlib import Path

import pandas as pd

import cli
from cli import InputError
from frames_io import IMAGE_EXTS, TIFF_EXTS, VIDEO_EXTS, list_frames, patient_of

MODES = ("videos", "clips")


def scan_root(root):
    """(entries, skipped): entries are (embryo_id, path, kind, frames); skipped are (name, reason)."""
    entries, skipped = [], []
    for path in sorted(Path(root).iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if path.is_dir():
            frames = list_frames(path)
            if frames:
                entries.append((path.name, path, "frames", frames))
            else:
                nested = " (frames only in subfolders, which are not read)" if any(
                    p.is_dir() and list_frames(p) for p in path.iterdir()) else ""
                skipped.append((path.name, f"folder without image frames{nested}"))
        elif suffix in VIDEO_EXTS or suffix in TIFF_EXTS:
            if path.stat().st_size == 0:
                skipped.append((path.name, "empty (0-byte) file"))
            else:
                entries.append((path.stem, path, "video" if suffix in VIDEO_EXTS else "tiff", None))
        elif suffix in IMAGE_EXTS:
            skipped.append((path.name, "loose image file at the root (put each embryo's frames in its own folder)"))
        else:
            skipped.append((path.name, "not a frame folder, video or TIFF stack"))
    return entries, skipped


def read_labels(path):
    """Labels CSV with an `embryo_id` column and a `label` column (0/1/blank), other columns kept."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: cannot read labels CSV ({e})") from None
    if "embryo_id" not in df.columns or "label" not in df.columns:
        raise InputError(f"{path}: labels CSV needs 'embryo_id' and 'label' columns, found {list(df.columns)}")
    for i, value in enumerate(df["label"]):
        value = value.strip()
        if value and not (value.lstrip("-").isdigit()):
            raise InputError(f"{path} line {i + 2}: label {value!r} is not an integer (0 empty, 1 embryo, blank)")
    if df["embryo_id"].duplicated().any():
        dup = df.loc[df["embryo_id"].duplicated(), "embryo_id"].iloc[0]
        raise InputError(f"{path}: embryo_id {dup!r} appears more than once")
    return df.set_index("embryo_id")


def build_rows(entries, out_dir, mode, seq_len, frame_step, window_step, labels):
    """index.csv rows for the scanned entries; returns (rows, skipped)."""
    rows, skipped = [], []
    for embryo_id, path, kind, frames in entries:
        extra = {"patient_id": patient_of(embryo_id)}
        if labels is not None and embryo_id in labels.index:
            extra.update(labels.loc[embryo_id].to_dict())
        rel = Path(os.path.relpath(path, out_dir)).as_posix()
        if mode == "videos":
            n = len(frames) if frames is not None else ""
            rows.append({"path": rel, "embryo_id": embryo_id, **extra, "n_frames": n})
            continue
        if kind != "frames":
            skipped.append((path.name, "clips mode needs frame folders (use --mode videos for video files)"))
            continue
        picked = list(range(0, len(frames), frame_step))
        if len(picked) < seq_len:
            skipped.append((path.name, f"only {len(picked)} frames after --frame_step {frame_step}, "
                                       f"a clip needs --seq_len {seq_len}"))
            continue
        for s in range(0, len(picked) - seq_len + 1, window_step):
            window = picked[s:s + seq_len]
            paths = "|".join(Path(os.path.relpath(frames[k], out_dir)).as_posix() for k in window)
            rows.append({"cell_id": embryo_id, "start_idx": window[0], "paths": paths, **extra})
    return rows, skipped


def get_args_parser():
    parser = cli.OneLineParser(prog="build_index.py", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=str, required=True,
                        help="dataset root with one frame folder, video or TIFF stack per embryo (required)")
    parser.add_argument("--out", type=str, default="index.csv", help="output CSV (default: %(default)s)")
    parser.add_argument("--mode", type=str, default="videos", choices=MODES,
                        help="one row per embryo, or fixed-length clip rows (default: %(default)s)")
    parser.add_argument("--seq_len", type=int, default=20,
                        help="frames per clip in clips mode (default: %(default)s)")
    parser.add_argument("--frame_step", "--subsample", type=int, default=3, dest="frame_step",
                        help="clips mode: take every n-th frame (--subsample is the old name) (default: %(default)s)")
    parser.add_argument("--window_step", "--stride", type=int, default=10, dest="window_step",
                        help="clips mode: start a window every n taken frames (--stride is the old name) "
                             "(default: %(default)s)")
    parser.add_argument("--labels", type=str, default=None,
                        help="CSV with embryo_id,label (0 empty, 1 embryo) and optional extra columns such as "
                             "patient_id or split, merged into the index (default: %(default)s = no labels)")
    return parser


def main(args):
    root, out = Path(args.root), Path(args.out)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found or not a folder")
    if min(args.seq_len, args.frame_step, args.window_step) < 1:
        raise InputError("--seq_len, --frame_step and --window_step must be at least 1")
    labels = read_labels(args.labels) if args.labels else None
    entries, skipped = scan_root(root)
    rows, more = build_rows(entries, os.path.abspath(out.parent), args.mode, args.seq_len, args.frame_step,
                            args.window_step, labels)
    skipped += more
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if labels is not None:
        missing = sorted(set(labels.index) - {e[0] for e in entries})
        if missing:
            print(f"{len(missing)} embryo ids in {args.labels} were not found under {root}: "
                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    if not rows:
        raise InputError(f"no usable embryos under {root} ({len(skipped)} entries skipped)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cli.write_bytes(out, pd.DataFrame(rows).to_csv(index=False).encode())
    n_embryos = len({r.get("embryo_id", r.get("cell_id")) for r in rows})
    print(f"wrote {len(rows)} {args.mode} rows for {n_embryos} embryos to {out}; skipped {len(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main("build_index.py", main, get_args_parser().parse_args()))
