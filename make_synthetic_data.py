"""Synthetic embryo time-lapse wells with per-frame developmental phases.

Each well is a grayscale recording in the layout of the public Gomez et al. 2022 dataset:
`embryo_dataset/<embryo_id>/..._RUN<k>.jpeg` (k from 1, not zero-padded) or one `.avi` per well,
plus `annotations/<embryo_id>_phases.csv` (rows `phase,first_frame,last_frame` in RUN numbers,
no header) and `annotations/<embryo_id>_timeElapsed.csv` (`frame_index,time`, hours).
About a quarter of the wells are empty (label 0, debris only, no phases file); the rest hold an
embryo (label 1) that goes through the phases tPB2 ... tHB: one cell with polar body and
pronuclei, cleavage to 2..8 and 9+ cells, compaction (morula), then a blastocyst whose cavity
grows, expands and hatches. Wells drift slowly, with sensor noise and lamp flicker.
Embryo ids are `<patient>-<n>` (e.g. `AA83-2`) with several embryos per patient.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

PHASES = ("tPB2", "tPNa", "tPNf", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9+",
          "tM", "tSB", "tB", "tEB", "tHB")
# Typical onset of each phase in hours after insemination (rough EmbryoScope timings).
PHASE_ONSET_H = (3.0, 9.0, 23.0, 26.0, 36.0, 38.0, 48.0, 50.0, 52.0, 55.0, 62.0,
                 80.0, 96.0, 106.0, 116.0, 128.0)
CELLS_PER_PHASE = {"t2": 2, "t3": 3, "t4": 4, "t5": 5, "t6": 6, "t7": 7, "t8": 8, "t9+": 12}
RECORDING_HOURS = 140.0
FORMATS = ("jpeg", "avi")


def _phase_schedule(rng, n_frames):
    """Frame times (hours), phase index of each frame (-1 before tPB2) and the phase onsets."""
    start = rng.uniform(0.0, 2.0)
    hours = start + np.arange(n_frames) * (RECORDING_HOURS / n_frames)
    onsets = np.array(PHASE_ONSET_H) * rng.uniform(0.9, 1.1)
    phase = np.searchsorted(onsets, hours, side="right") - 1
    return hours, phase, onsets


def _patients_and_ids(rng, n_embryos):
    """Embryo ids `<patient>-<n>` with 1-4 embryos per patient."""
    ids, patients, used = [], [], set()
    while len(ids) < n_embryos:
        letters = "".join(chr(ord("A") + int(c)) for c in rng.integers(0, 26, 2))
        patient = f"{letters}{int(rng.integers(10, 100))}"
        if patient in used:
            continue
        used.add(patient)
        for k in range(1, int(rng.integers(1, 5)) + 1):
            if len(ids) < n_embryos:
                ids.append(f"{patient}-{k}")
                patients.append(patient)
    return ids, patients


def _draw_cell(img, center, radius, s, brightness=0.68):
    """A cell: bright cytoplasm with a dark membrane."""
    c = (int(round(center[0] * s)), int(round(center[1] * s)))
    r = max(1, int(round(radius * s)))
    cv2.circle(img, c, r, brightness, -1)
    cv2.circle(img, c, r, 0.30, max(1, int(round(0.008 * s))))


def _draw_embryo(img, s, center, phase_name, progress, angle, rng_frame):
    """Draw zona and cells for one phase; `progress` in [0, 1] moves within the phase."""
    cx, cy = center
    zona_r, zona_w = 0.30, 0.03
    if phase_name == "tEB":
        zona_r, zona_w = 0.30 + 0.04 * progress, 0.03 - 0.012 * progress
    elif phase_name == "tHB":
        zona_r, zona_w = 0.34, 0.016
    zc = (int(round(cx * s)), int(round(cy * s)))
    cv2.circle(img, zc, int(round(zona_r * s)), 0.80, max(1, int(round(zona_w * s))))
    cv2.circle(img, zc, int(round((zona_r - zona_w / 2) * s)), 0.40, max(1, int(round(0.006 * s))))
    inner = zona_r - zona_w / 2 - 0.01

    if phase_name in ("", "tPB2", "tPNa", "tPNf"):
        _draw_cell(img, (cx, cy), inner - 0.02, s)
        if phase_name:  # second polar body
            px, py = cx + (inner - 0.01) * np.cos(angle), cy + (inner - 0.01) * np.sin(angle)
            _draw_cell(img, (px, py), 0.03, s, brightness=0.75)
        if phase_name in ("tPNa", "tPNf"):
            fade = 0.30 if phase_name == "tPNa" else 0.30 + 0.30 * progress
            for sign in (-1, 1):
                pc = (int(round((cx + sign * 0.045) * s)), int(round(cy * s)))
                cv2.circle(img, pc, int(round(0.04 * s)), fade, max(1, int(round(0.008 * s))))
    elif phase_name in CELLS_PER_PHASE:
        n = CELLS_PER_PHASE[phase_name]
        r = (inner - 0.02) * n ** (-1 / 3) * 1.05
        ring = [(n, inner - r)] if n <= 4 else [(n - 1, inner - r), (1, 0.0)]
        if n == 12:
            ring = [(8, inner - r), (4, (inner - r) * 0.4)]
        for count, ring_r in ring:
            for k in range(count):
                a = angle + 2 * np.pi * k / count
                _draw_cell(img, (cx + ring_r * np.cos(a), cy + ring_r * np.sin(a)), r, s)
    elif phase_name in ("tM", "tSB"):
        r = inner - 0.04 - 0.02 * progress  # compaction shrinks the morula
        _draw_cell(img, (cx, cy), r, s, brightness=0.72)
        for k in range(6):  # faint boundaries between compacted cells
            a = angle + np.pi * k / 3
            p0 = (int(round(cx * s)), int(round(cy * s)))
            p1 = (int(round((cx + r * np.cos(a)) * s)), int(round((cy + r * np.sin(a)) * s)))
            cv2.line(img, p0, p1, 0.60, 1)
        if phase_name == "tSB":
            cav = 0.03 + 0.05 * progress
            cc = (int(round((cx + 0.06 * np.cos(angle)) * s)), int(round((cy + 0.06 * np.sin(angle)) * s)))
            cv2.circle(img, cc, int(round(cav * s)), 0.42, -1)
    else:  # tB, tEB, tHB: blastocyst with a cavity and inner cell mass
        r = {"tB": inner - 0.03, "tEB": inner - 0.005, "tHB": 0.30}[phase_name]
        bx, by = cx, cy
        if phase_name == "tHB":  # pushed out through the zona
            shift = 0.05 + 0.15 * progress
            bx, by = cx + shift * np.cos(angle), cy + shift * np.sin(angle)
        bc = (int(round(bx * s)), int(round(by * s)))
        cavity = 0.45 if phase_name == "tB" and progress < 0.5 else 0.38
        cv2.circle(img, bc, int(round(r * s)), cavity, -1)
        cv2.circle(img, bc, int(round(r * s)), 0.74, max(1, int(round(0.018 * s))))
        icm = (bx - 0.6 * r * np.cos(angle), by - 0.6 * r * np.sin(angle))
        _draw_cell(img, icm, 0.3 * r, s, brightness=0.76)
    if rng_frame.random() < 0.3:  # occasional fragment
        fa = rng_frame.uniform(0, 2 * np.pi)
        _draw_cell(img, (cx + inner * 0.8 * np.cos(fa), cy + inner * 0.8 * np.sin(fa)), 0.015, s, 0.7)


def _background(s):
    """Well background: gray with a vignette and the dark well edge."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    rr = np.sqrt(xx ** 2 + yy ** 2)
    bg = 0.55 - 0.25 * rr ** 2
    bg[rr > 0.47] = 0.22
    return bg.astype(np.float32)


def render_well(rng, n_frames, size, embryo):
    """Render one well: (n_frames, size, size) uint8 frames, hours and phase index per frame."""
    hours, phase, onsets = _phase_schedule(rng, n_frames)
    bg = _background(size)
    c0 = 0.5 + rng.uniform(-0.03, 0.03, 2)
    drift = rng.normal(0, 0.002, (n_frames, 2)).cumsum(0)
    angle0 = rng.uniform(0, 2 * np.pi)
    debris = rng.uniform(0.15, 0.85, (int(rng.integers(3, 9)), 2))
    ksize = 2 * max(1, size // 128) + 1
    frames = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        img = bg.copy()
        center = c0 + drift[t]
        for d in debris + drift[t] * 3:
            cv2.circle(img, (int(d[0] * size), int(d[1] * size)), max(1, size // 50), 0.3, -1)
        if embryo:
            p = int(phase[t])
            name = PHASES[p] if p >= 0 else ""
            if p >= 0:
                hi = onsets[p + 1] if p + 1 < len(PHASES) else RECORDING_HOURS * 1.1
                progress = float(np.clip((hours[t] - onsets[p]) / (hi - onsets[p]), 0.0, 1.0))
            else:
                progress = 0.0
            _draw_embryo(img, size, center, name, progress, angle0 + 0.002 * t, rng)
        img = cv2.GaussianBlur(img, (ksize, ksize), 0)
        img = img * rng.normal(1.0, 0.03) + rng.normal(0.0, 0.03, img.shape).astype(np.float32)
        frames[t] = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return frames, hours, phase


def _phase_rows(phase):
    """`phase,first_frame,last_frame` rows (RUN numbers from 1) for the phases present."""
    rows = []
    for p in np.unique(phase[phase >= 0]):
        runs = np.flatnonzero(phase == p) + 1
        rows.append((PHASES[p], int(runs[0]), int(runs[-1])))
    return rows


def make_synthetic_dataset(out_dir, n_embryos, n_frames, size, seed, fmt="jpeg"):
    """Write a synthetic dataset to `out_dir` and return the path of its index.csv."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if n_embryos < 1 or n_frames < 1 or size < 16:
        raise ValueError("need n_embryos >= 1, n_frames >= 1 and size >= 16")
    out = Path(out_dir)
    (out / "embryo_dataset").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    ids, patients = _patients_and_ids(rng, n_embryos)
    n_empty = int(round(n_embryos / 4)) if n_embryos > 1 else 0
    empty = set(rng.choice(n_embryos, n_empty, replace=False).tolist())
    rows = []
    for w, (embryo_id, patient) in enumerate(zip(ids, patients, strict=True)):
        label = 0 if w in empty else 1
        frames, hours, phase = render_well(np.random.default_rng([seed, w]), n_frames, size, label == 1)
        if fmt == "jpeg":
            folder = out / "embryo_dataset" / embryo_id
            folder.mkdir(exist_ok=True)
            stem = f"D2013.01.28_S{1000 + w}_I132_WELL{w % 16 + 1}"
            for t, frame in enumerate(frames):
                cv2.imwrite(str(folder / f"{stem}_RUN{t + 1}.jpeg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            rel = f"embryo_dataset/{embryo_id}"
        else:
            path = out / "embryo_dataset" / f"{embryo_id}.avi"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (size, size), isColor=False)
            if not writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write MJPG AVI to {path}")
            for frame in frames:
                writer.write(frame)
            writer.release()
            rel = f"embryo_dataset/{embryo_id}.avi"
        pd.DataFrame({"frame_index": np.arange(1, n_frames + 1), "time": np.round(hours, 4)}).to_csv(
            out / "annotations" / f"{embryo_id}_timeElapsed.csv", index=False)
        if label == 1:
            pd.DataFrame(_phase_rows(phase)).to_csv(
                out / "annotations" / f"{embryo_id}_phases.csv", index=False, header=False)
        rows.append({"path": rel, "embryo_id": embryo_id, "label": label, "patient_id": patient,
                     "n_frames": n_frames})
    index_csv = out / "index.csv"
    pd.DataFrame(rows).to_csv(index_csv, index=False)
    return index_csv


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default="synthetic_data",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--n_embryos", type=int, default=20, help="number of wells (default: %(default)s)")
    parser.add_argument("--n_frames", type=int, default=60, help="frames per well (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--format", type=str, default="jpeg", choices=FORMATS,
                        help="frame folders of JPEGs or one MJPG AVI per well (default: %(default)s)")
    return parser


def main(args):
    if args.n_embryos < 1 or args.n_frames < 1 or args.size < 16:
        print("error: need --n_embryos >= 1, --n_frames >= 1 and --size >= 16", file=sys.stderr)
        return 2
    index_csv = make_synthetic_dataset(args.out, args.n_embryos, args.n_frames, args.size, args.seed,
                                       fmt=args.format)
    print(f"wrote {args.n_embryos} wells x {args.n_frames} frames to {index_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
