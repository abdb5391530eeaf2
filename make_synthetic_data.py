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

By default every well is also recorded the way a different clinic's microscope would record it
(`WellNuisance`, drawn once per well from the well's own seeded generator): the well and embryo sit
off-centre by up to 15% of the frame and drift slowly, the zona up to 15% larger or smaller, gain,
offset and focus differ, the illumination changes slowly over the recording, debris specks float in
the medium, and a time stamp is burnt into a corner of every frame. So no fixed pixel tells the
phase. `centred=True` (`--centred`) gives the old form: centred wells of equal size and brightness,
frame for frame the same as before. The phases and hours do not depend on it.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import cli

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


def _background(s, shift=(0.0, 0.0)):
    """Well background: gray with a vignette and the dark well edge; `shift` moves the well in the field."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    xx, yy = xx - shift[0], yy - shift[1]
    rr = np.sqrt(xx ** 2 + yy ** 2)
    bg = 0.55 - 0.25 * rr ** 2
    bg[rr > 0.47] = 0.22
    return bg.astype(np.float32)


@dataclass
class WellNuisance:
    """How one clinic's microscope and incubator record one well: everything that varies between wells
    (and slowly within a recording) but says nothing about the embryo. Lengths are fractions of the frame
    unless they say pixels; per-frame fields have one entry per frame."""

    offset: np.ndarray  # (2,) x, y shift of the well and embryo in the field
    drift: np.ndarray  # (2,) embryo's slow drift over the whole recording
    zoom: float  # zona (and embryo) size factor
    gain: float  # pixel = gain * signal + bias (contrast and brightness)
    bias: float
    blur_sigma: np.ndarray  # (n_frames,) focus blur, pixels; 0 = in focus
    lamp: np.ndarray  # (n_frames,) global illumination factor, changing slowly
    gradient: np.ndarray  # (size, size) linear illumination ramp across the field, within [-0.71, 0.71]
    gradient_amp: np.ndarray  # (n_frames,) its slowly changing strength
    speck_xy: np.ndarray  # (k, 2) debris positions at the first frame
    speck_velocity: np.ndarray  # (k, 2) debris drift per frame (0 for specks stuck to the dish)
    speck_radius: np.ndarray  # (k,) pixels
    speck_value: np.ndarray  # (k,) intensity: dark or bright specks
    stamp_corner: int  # -1: no time stamp; else 0..3 = top-left, top-right, bottom-left, bottom-right
    clock_start_h: float  # incubator wall clock (hours of the day) when culture hour 0 was

    @classmethod
    def centred(cls, n_frames, size):
        """No nuisance: the old centred, equal-size, equal-brightness wells."""
        return cls(offset=np.zeros(2), drift=np.zeros(2), zoom=1.0, gain=1.0, bias=0.0,
                   blur_sigma=np.zeros(n_frames), lamp=np.ones(n_frames), gradient=np.zeros((size, size), np.float32),
                   gradient_amp=np.zeros(n_frames), speck_xy=np.zeros((0, 2)), speck_velocity=np.zeros((0, 2)),
                   speck_radius=np.zeros(0), speck_value=np.zeros(0), stamp_corner=-1, clock_start_h=0.0)


def _slow_wave(rng, n_frames):
    """A smooth curve over the recording in [-1, 1]: at most 1.5 periods, with a random phase."""
    t = np.arange(n_frames) / max(n_frames, 1)
    return np.sin(2 * np.pi * (rng.uniform(0.2, 1.5) * t + rng.uniform(0, 1)))


def draw_nuisance(rng, n_frames, size):
    """Draw one well's WellNuisance from its own generator (so each well is deterministic given the seed)."""
    direction, reach = rng.uniform(0, 2 * np.pi), 0.15 * np.sqrt(rng.uniform())  # uniform over a disc
    offset = reach * np.array([np.cos(direction), np.sin(direction)])
    drift = rng.normal(0.0, 0.015, 2)
    zoom = rng.uniform(0.85, 1.15)
    gain = rng.uniform(0.7, 1.3)
    bias = 0.5 * (1.0 - gain) + rng.uniform(-0.12, 0.12)  # contrast about mid-gray, then a brightness shift
    px = size / 128  # blur and speck sizes scale with the frame
    blur_sigma = np.clip(rng.uniform(0.0, 1.6) + rng.uniform(0.0, 0.4) * _slow_wave(rng, n_frames), 0, None) * px
    lamp = 1.0 + rng.uniform(-0.12, 0.12) * np.linspace(0, 1, n_frames) + 0.05 * _slow_wave(rng, n_frames)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * xx + np.sin(angle) * yy
    gradient_amp = rng.uniform(0.1, 0.3) * (1.0 + 0.5 * _slow_wave(rng, n_frames))
    k = int(rng.integers(2, 8))
    speck_xy = rng.uniform(0.05, 0.95, (k, 2))
    moving = rng.random(k) < 0.4
    speck_velocity = rng.normal(0.0, 0.08, (k, 2)) / max(n_frames, 1) * moving[:, None]
    speck_radius = np.maximum(1.0, rng.uniform(0.5, 2.5, k) * px)
    speck_value = np.where(rng.random(k) < 0.5, rng.uniform(0.05, 0.25, k), rng.uniform(0.8, 0.95, k))
    return WellNuisance(offset=offset, drift=drift, zoom=zoom, gain=gain, bias=bias, blur_sigma=blur_sigma, lamp=lamp,
                        gradient=gradient.astype(np.float32), gradient_amp=gradient_amp, speck_xy=speck_xy,
                        speck_velocity=speck_velocity, speck_radius=speck_radius, speck_value=speck_value,
                        stamp_corner=int(rng.integers(0, 4)), clock_start_h=rng.uniform(0, 24))


def _time_stamp(hours, clock_start_h):
    """The text an incubator burns in: culture day and wall-clock time, e.g. `D2 13:40`."""
    minutes = int(round((clock_start_h + hours) * 60)) % (24 * 60)
    return f"D{int(hours // 24)} {minutes // 60:02d}:{minutes % 60:02d}"


def _burn_stamp(frame, text, corner):
    """Write `text` in white with a dark shadow (legible on any background) into a corner of the uint8 frame."""
    size = frame.shape[0]
    scale, thick = max(0.2, size / 520), max(1, size // 300)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    margin = max(1, size // 40)
    x = margin if corner in (0, 2) else size - margin - w
    y = margin + h if corner in (0, 1) else size - margin - base
    for (dx, dy), value in (((1, 1), 0), ((0, 0), 255)):
        cv2.putText(frame, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, value, thick, cv2.LINE_AA)


def _acquire(scene, t, hours, nz, rng):
    """What the camera records of the scene at frame t: debris, optics and focus blur, illumination,
    gain and offset, lamp flicker and sensor noise, then the burnt-in time stamp. Returns uint8."""
    size = scene.shape[0]
    img = scene.copy()
    specks = nz.speck_xy + t * nz.speck_velocity
    for (x, y), r, value in zip(specks, nz.speck_radius, nz.speck_value, strict=True):
        cv2.circle(img, (int(x * size), int(y * size)), int(round(r)), float(value), -1)
    ksize = 2 * max(1, size // 128) + 1
    img = cv2.GaussianBlur(img, (ksize, ksize), 0)
    if nz.blur_sigma[t] > 0.1:
        img = cv2.GaussianBlur(img, (0, 0), float(nz.blur_sigma[t]))
    light = nz.lamp[t] * (1.0 + nz.gradient_amp[t] * nz.gradient)
    img = img * light.astype(np.float32) * np.float32(nz.gain) + np.float32(nz.bias)  # float32 as before
    img = img * rng.normal(1.0, 0.03) + rng.normal(0.0, 0.03, img.shape).astype(np.float32)
    frame = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    if nz.stamp_corner >= 0:
        _burn_stamp(frame, _time_stamp(hours, nz.clock_start_h), nz.stamp_corner)
    return frame


def render_well(rng, n_frames, size, embryo, centred=False):
    """Render one well: (n_frames, size, size) uint8 frames, hours and phase index per frame.

    The developmental content (hours, phases, the embryo drawn for them) is the same with or without
    `centred`; `centred=True` leaves out the WellNuisance (the old centred, equal wells)."""
    hours, phase, onsets = _phase_schedule(rng, n_frames)
    c0 = 0.5 + rng.uniform(-0.03, 0.03, 2)
    walk = rng.normal(0, 0.002, (n_frames, 2)).cumsum(0)
    angle0 = rng.uniform(0, 2 * np.pi)
    debris = rng.uniform(0.15, 0.85, (int(rng.integers(3, 9)), 2))
    nz = WellNuisance.centred(n_frames, size) if centred else draw_nuisance(rng, n_frames, size)
    bg = _background(size, (float(nz.offset[0]), float(nz.offset[1])))
    frames = np.empty((n_frames, size, size), np.uint8)
    for t in range(n_frames):
        img = bg.copy()
        for d in debris + walk[t] * 3 + nz.offset:
            cv2.circle(img, (int(d[0] * size), int(d[1] * size)), max(1, size // 50), 0.3, -1)
        if embryo:
            p = int(phase[t])
            name = PHASES[p] if p >= 0 else ""
            if p >= 0:
                hi = onsets[p + 1] if p + 1 < len(PHASES) else RECORDING_HOURS * 1.1
                progress = float(np.clip((hours[t] - onsets[p]) / (hi - onsets[p]), 0.0, 1.0))
            else:
                progress = 0.0
            centre = c0 + walk[t] + nz.offset + nz.drift * (t / n_frames)
            # drawing at size * zoom pixels per unit around centre / zoom scales the embryo about its centre
            _draw_embryo(img, size * nz.zoom, centre / nz.zoom, name, progress, angle0 + 0.002 * t, rng)
        frames[t] = _acquire(img, t, hours[t], nz, rng)
    return frames, hours, phase


def _phase_rows(phase):
    """`phase,first_frame,last_frame` rows (RUN numbers from 1) for the phases present."""
    rows = []
    for p in np.unique(phase[phase >= 0]):
        runs = np.flatnonzero(phase == p) + 1
        rows.append((PHASES[p], int(runs[0]), int(runs[-1])))
    return rows


def make_synthetic_dataset(out_dir, n_embryos, n_frames, size, seed, fmt="jpeg", centred=False):
    """Write a synthetic dataset to `out_dir` and return the path of its index.csv.

    Wells vary as different clinics' recordings do unless `centred` (the old centred, equal wells)."""
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
        frames, hours, phase = render_well(np.random.default_rng([seed, w]), n_frames, size, label == 1,
                                           centred=centred)
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
    parser = cli.OneLineParser(prog="make_synthetic_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default="synthetic_data",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--n_embryos", type=int, default=20, help="number of wells (default: %(default)s)")
    parser.add_argument("--n_frames", type=int, default=60, help="frames per well (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels (default: %(default)s)")
    cli.add_seed_arg(parser, what="wells, embryos and their nuisance variation")
    parser.add_argument("--format", type=str, default="jpeg", choices=FORMATS,
                        help="frame folders of JPEGs or one MJPG AVI per well (default: %(default)s)")
    parser.add_argument("--centred", action="store_true",
                        help="give the old centred, equal-size, equal-brightness wells: no variation of position, "
                             "zona size, gain/offset, focus, illumination, debris or time stamp between wells "
                             "(default: off, wells vary as real clinics' recordings do)")
    return parser


def main(args):
    if args.n_embryos < 1 or args.n_frames < 1 or args.size < 16 or not 0 <= args.seed < 2**32:
        print("make_synthetic_data.py: error: need --n_embryos >= 1, --n_frames >= 1, --size >= 16 "
              "and 0 <= --seed < 2**32", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    index_csv = make_synthetic_dataset(args.out, args.n_embryos, args.n_frames, args.size, args.seed,
                                       fmt=args.format, centred=args.centred)
    print(f"wrote {args.n_embryos} wells x {args.n_frames} frames to {index_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
