"""Analyse latents written by extract_latents.py: T-PHATE, speed, outliers, topology, classifier, probes.

Reads `--latents DIR` (its `trajectories/` and/or `clips/` folders, checked first by latents_folder.py: each whole,
of one extraction, both of one checkpoint) and writes `--out DIR` whole (into a folder beside it, swapped in at the
end; output_folder.OutputFolder): `summary.json` (every number below), CSV tables and PNG figures (drawn by
latent_figures.py). Exit codes: cli.py's table; a stop signal leaves --out as it was (85, Ctrl-C 130).

- T-PHATE (`tphate`) of each trajectory's latents (its own PCA to `--tphate_n_pca` for the kNN graph only):
  `tphate/<embryo>.png` coloured by time and phase, `tphate_embeddings.csv`, the autocorrelation dropoff per
  embryo; `population.png`: all trajectories in one shared PCA plane.
- Per embryo (`per_embryo.csv`): speed curve ||z(t+1) - z(t)|| (`speeds.csv`, `speed_curves.png`), trajectory
  length, start-end distance; robust (median/MAD) outliers (`outliers.csv`, `outliers.png`).
- Persistent homology (`ripser`): H0/H1 diagrams, total persistence, persistence entropy, Betti curves
  (`persistence_diagrams.csv`, `betti_curves.csv`, `persistence.png`).
- The model's own classifier (clips/probs.npy) on labelled clips: accuracy, balanced accuracy, ROC AUC, confusion
  matrix, ROC curve (`roc_curve.png`, `confusion_matrix.png`), also per split of the run that trained the
  checkpoint (train, val, unseen); the latents' own label separability is the `label` probe.
- Probes (latent_probes.PROBES), each beside its controls (`probes` in summary.json, `probes.png`): phase (scores,
  then decoded monotone per embryo, and the onset of every phase: `morphokinetics.csv`, `morphokinetics.png`),
  hours since the first frame (wells with times only; `frames` when none has times), the recording's label; on
  the trained latents, an untrained model's latents and the raw pixels, beside the majority (mean) baseline,
  linear and kNN readouts, every choice made by grouped inner folds (latent_probes.py says how).

Trajectories come from `trajectories/` (whole recordings); without it, each clip's pooled z_seq is one
short trajectory. No torch is imported.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import latent_figures as figures
import latent_geometry as geometry
import latent_probes as probes
from cli import (
    CLIPS_DIR,
    LATENT_KEY,
    TRAJECTORY_DIR,
    InputError,
    OneLineParser,
    StopSignal,
    add_seed_arg,
    check_numbers,
    check_seed,
    run_main,
    stop_signals,
    write_bytes,
)
from frames_io import patient_of
from latents_folder import (
    CONTROL_KEYS,
    EXTRACTION_KEY,
    PATTERNS,
    ROW_SPLITS,
    check_one_checkpoint,
    load_clips,
    load_trajectories,
    read_info,
    trajectories_from_clips,
)
from output_folder import OutputFolder

PER_FRAME = ("z", "frame_indices", "hours", "phase")  # a trajectory dict's per-frame arrays
MORPHOKINETICS_CSV = "morphokinetics.csv"  # the phase probe's event times: onset of every phase per embryo
OUTPUTS = ("summary.json", "*.csv", "*.png", "tphate")  # what an --out folder holds (output_folder.OutputFolder)



# ----------------------------------------------------------------------------- loading

def trim_start(trajectories: list[dict], n: int) -> list[dict]:
    """Drop the first n frames of every trajectory (the encoder state warming up from zero); trajectories
    left with fewer than 3 frames are dropped."""
    return [{**t, **{k: t[k][n:] for k in PER_FRAME}, "start": t["start"] + n} if n else t
            for t in trajectories if len(t["z"]) - n >= 3]


def patient_groups(meta: pd.DataFrame) -> np.ndarray:
    """Patient of each row: the patient_id column if present, else cell_id without its trailing -<n>."""
    fallback = meta["cell_id"].astype(str).map(patient_of)
    if "patient_id" in meta.columns:
        patient = meta["patient_id"]
        return np.where(patient.isna() | (patient.astype(str) == ""), fallback, patient.astype(str))
    return fallback.to_numpy()


def known_labels(meta: pd.DataFrame) -> np.ndarray:
    """Integer labels with -1 for unknown (blank, NaN or negative)."""
    labels = pd.to_numeric(meta["label"], errors="coerce").fillna(-1).astype(int).to_numpy()
    return np.where(labels < 0, -1, labels)


# ----------------------------------------------------------------------------- steps

def describe_trajectory(traj: dict, method: str, dropoff: int | None, dgms: list[np.ndarray]) -> dict:
    """One per_embryo.csv row: trajectory statistics, T-PHATE's method and dropoff, H0/H1 summaries."""
    return {"embryo": traj["name"], "cell_id": traj["meta"].get("cell_id"), "label": traj["meta"].get("label"),
            **geometry.trajectory_stats(traj["z"]), "embedding_method": method, "tphate_dropoff": dropoff,
            **geometry.persistence_summary(dgms)}


def write_trajectory_tables(trajectories: list[dict], table: pd.DataFrame, embeddings: list, speeds: list,
                            out: Path) -> None:
    """per_embryo.csv, outliers.csv, tphate_embeddings.csv and speeds.csv."""
    table.to_csv(out / "per_embryo.csv", index=False)
    table[table["is_outlier"]].to_csv(out / "outliers.csv", index=False)
    pd.concat([pd.DataFrame({"embryo": t["name"], "frame_index": t["frame_indices"], "hours": t["hours"],
                             "phase": t["phase"], "dim_1": e[:, 0], "dim_2": e[:, 1], "method": method})
               for t, e, method in zip(trajectories, embeddings, table["embedding_method"], strict=True)]
              ).to_csv(out / "tphate_embeddings.csv", index=False)
    pd.concat([pd.DataFrame({"embryo": t["name"], "frame_index": t["frame_indices"][1:], "hours": t["hours"][1:],
                             "speed": speed}) for t, speed in zip(trajectories, speeds, strict=True)]
              ).to_csv(out / "speeds.csv", index=False)


def analyse_topology(table: pd.DataFrame, diagrams: list, betti_points: int, out: Path) -> dict:
    """Betti curves on one radius grid shared by all embryos; writes the diagrams, the curves and their figure."""
    finite_deaths = [d[np.isfinite(d[:, 1]), 1] for dgms in diagrams for d in dgms if len(d)]
    top = max([float(f.max()) for f in finite_deaths if len(f)], default=1.0)
    radii = np.linspace(0.0, top, betti_points)
    betti = np.stack([[geometry.betti_curve(d, radii) for d in dgms[:2]] for dgms in diagrams])  # (E, 2, R)
    names = list(table["embryo"])
    pd.concat([pd.DataFrame({"embryo": name, "dim": dim, "birth": dgm[:, 0], "death": dgm[:, 1]})
               for name, dgms in zip(names, diagrams, strict=True) for dim, dgm in enumerate(dgms)]
              ).to_csv(out / "persistence_diagrams.csv", index=False)
    pd.concat([pd.DataFrame({"embryo": name, "radius": radii, "betti_0": b[0], "betti_1": b[1]})
               for name, b in zip(names, betti, strict=True)]).to_csv(out / "betti_curves.csv", index=False)
    example = int(table["h1_total_persistence"].to_numpy().argmax())
    figures.plot_persistence(names, diagrams, radii, betti, example, out / "persistence.png")
    return {"betti_radii": [float(r) for r in radii], "mean_betti_0": betti[:, 0].mean(axis=0).tolist(),
            "mean_betti_1": betti[:, 1].mean(axis=0).tolist()}


def analyse_trajectories(trajectories: list[dict], out: Path, args) -> dict:
    """T-PHATE, speed, stats, outliers and topology of every trajectory; writes CSVs and figures."""
    from tqdm import tqdm

    (out / "tphate").mkdir(parents=True, exist_ok=True)
    palette = figures.phase_palette(probes.ordered_phases(np.concatenate([t["phase"] for t in trajectories])))
    rows, speeds, diagrams, embeddings = [], [], [], []
    for k, traj in enumerate(tqdm(trajectories, desc="trajectories", unit="embryo", disable=None)):
        embedding, method, dropoff = geometry.tphate_embedding(traj["z"], args.tphate_n_pca, args.tphate_knn,
                                                               args.seed)
        if k < args.max_embryo_plots:
            figures.plot_tphate(traj, embedding, method, palette, out / "tphate" / f"{traj['name']}.png")
        embeddings.append(embedding)
        speeds.append(geometry.speed_curve(traj["z"]))
        diagrams.append(geometry.persistence_diagrams(traj["z"], maxdim=1, max_points=args.ph_max_points))
        rows.append(describe_trajectory(traj, method, dropoff, diagrams[-1]))
    table = geometry.flag_outliers(pd.DataFrame(rows), geometry.OUTLIER_COLUMNS, args.outlier_threshold)
    write_trajectory_tables(trajectories, table, embeddings, speeds, out)
    outlier_names = set(table.loc[table["is_outlier"], "embryo"])
    figures.plot_speed_curves(trajectories, speeds, outlier_names, out / "speed_curves.png")
    figures.plot_outliers(table, args.outlier_threshold, geometry.OUTLIER_COLUMNS, out / "outliers.png")
    planes, ratio = geometry.population_plane(trajectories, seed=args.seed)
    figures.plot_population(trajectories, planes, ratio, palette, out / "population.png")
    numeric = ["n_frames", "trajectory_length", "start_end_distance", "straightness", "mean_speed", "max_speed",
               "h0_total_persistence", "h1_total_persistence", "h0_persistence_entropy", "h1_persistence_entropy",
               "h1_max_persistence"]
    return {
        "n_embryos": len(trajectories),
        "embedding_methods": {m: int(n) for m, n in table["embedding_method"].value_counts(sort=False).items()},
        "tphate": {"input": "the latents themselves", "n_pca": args.tphate_n_pca, "knn": args.tphate_knn,
                   "seed": args.seed, "median_dropoff": _json_float(table["tphate_dropoff"].median())},
        "statistics_median": {c: _json_float(table[c].median()) for c in numeric},
        "outliers": {"threshold": args.outlier_threshold, "columns": list(geometry.OUTLIER_COLUMNS),
                     "embryos": sorted(outlier_names)},
        "population_pca": {"explained_variance_ratio": ratio},
        **analyse_topology(table, diagrams, args.betti_points, out),
        "per_embryo": json.loads(table.to_json(orient="records")),
    }


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def analyse_classifier(clips: dict | None, out: Path) -> dict | None:
    """Empty-well/embryo metrics of the model's own classifier (clips/probs.npy), over all labelled clips and per
    split (training rows flatter it); None when the latents hold no classifier probabilities or no labels. (The
    latents' own separability, beside its controls, is the `label` probe.)"""
    if clips is None or clips["probs"] is None:
        return None
    meta = clips["meta"]
    labels = known_labels(meta)
    keep = labels >= 0
    if not keep.any():
        return None
    metrics = probes.classification_metrics(labels[keep], clips["probs"][keep])
    metrics["source"] = "model classifier probabilities (clips/probs.npy)"
    splits = meta["split"].fillna("").astype(str).to_numpy()[keep] if "split" in meta.columns else None
    if splits is not None and len(set(splits)) > 1:
        metrics["by_split"] = {}
        for split in sorted(set(splits)):
            in_split = splits == split
            part = probes.classification_metrics(labels[keep][in_split], clips["probs"][keep][in_split])
            part.pop("roc_curve")
            metrics["by_split"][split or "(none)"] = part
    metrics["figures"] = figures.plot_classifier(metrics, metrics["source"][:70], out / "roc_curve.png",
                                                 out / "confusion_matrix.png")
    return metrics


def read_control(traj: dict, name: str, rows: np.ndarray) -> np.ndarray:
    """Rows (of the trimmed trajectory) of one control array, checked to align with the trajectory's z."""
    key = CONTROL_KEYS[name]
    with np.load(traj["path"]) as data:
        values = data[key]
    n_rows = traj["start"] + len(traj["z"])
    if values.ndim != 2 or len(values) != n_rows:
        raise InputError(f"{traj['path']}: {key} has shape {values.shape}, expected {n_rows} rows like "
                         f"{LATENT_KEY}; re-run extract_latents.py")
    return values[traj["start"] + rows].astype(np.float64)


def probe_features(trajectories: list[dict], rows: list[np.ndarray], per_recording: bool = False) -> dict:
    """The trained latents and each control (float32) at the given rows (per_recording: their mean, one row per
    trajectory); a control that some trajectory lacks is missing (a string saying why)."""
    used = [(t, r) for t, r in zip(trajectories, rows, strict=True) if len(r)]

    def gather(values):  # one array per used trajectory -> rows
        rows_of = [v.mean(axis=0, keepdims=True) for v in values] if per_recording else values
        return np.concatenate(rows_of).astype(np.float32)

    features = {"trained": gather([t["z"][r] for t, r in used])}
    for name, key in CONTROL_KEYS.items():
        lacking = sum(name not in t["controls"] for t, _ in used)
        features[name] = (f"no {key} for {lacking} of {len(used)} trajectories (clip latents, an extraction "
                          "older than the controls, or one run with --no_controls)" if lacking else
                          gather([read_control(t, name, r) for t, r in used]))
    return features


def probe_data(spec: probes.ProbeSpec, trajectories: list[dict]) -> probes.ProbeData | None:
    """The data of a probe (probes.PROBES): every frame with its target (or, per recording, each trajectory's
    time-mean) with its groups, embryo, time and frame index; None when fewer than two groups (embryos, or patients
    for a per-recording probe) or, for a classification, fewer than two classes have its target."""
    targets = [spec.values(t) for t in trajectories]
    used = [k for k, (_, mask) in enumerate(targets) if mask.any()]
    if spec.level == "frame":
        rows = [np.flatnonzero(targets[k][1]) for k in used]

        def per_frame(arrays):  # one array per used trajectory -> its rows, concatenated
            return np.concatenate([np.asarray(a)[r] for a, r in zip(arrays, rows, strict=True)]) if used else \
                np.zeros(0)

        y = per_frame([targets[k][0] for k in used])
        embryo = groups = per_frame([np.full(len(targets[k][0]), trajectories[k]["name"]) for k in used])
        hours, frame = (per_frame([trajectories[k][key] for k in used]) for key in ("hours", "frame_indices"))
    else:
        rows = [np.arange(len(trajectories[k]["z"])) for k in used]
        y, embryo = np.array([targets[k][0][0] for k in used]), np.array([trajectories[k]["name"] for k in used])
        groups = patient_groups(pd.DataFrame([trajectories[k]["meta"] for k in used])) if used else embryo
        hours, frame = np.full(len(used), np.nan), np.zeros(len(used), np.int64)
    if len(np.unique(groups)) < 2 or (spec.task == "classification" and len(np.unique(y)) < 2):
        return None
    features = probe_features([trajectories[k] for k in used], rows, per_recording=spec.level != "frame")
    return probes.ProbeData(features, y, groups, embryo, hours.astype(np.float64), frame)


def analyse_probes(trajectories: list[dict], out: Path, args) -> dict:
    """Every probe of probes.PROBES that applies, on the trained latents beside their controls (None when its target
    is missing: probe_data); the phase probe's event times go to morphokinetics.csv and morphokinetics.png."""
    result = {}
    for spec in probes.PROBES:
        if not spec.applies(trajectories):
            continue
        data = probe_data(spec, trajectories)
        if data is None:
            result[spec.name] = None
            continue
        probe, events = probes.run_probe(spec, data, args.cv_folds, args.seed, args.probe_max_frames)
        result[spec.name] = {"target": spec.target, **({"unit": spec.unit} if spec.unit else {}),
                             "n_embryos": len(np.unique(data.embryo)), "grouped_by": spec.grouped_by,
                             **({"wells": probes.count_wells(trajectories)} if spec.task == "regression" else {}),
                             **probe}
        if events is not None:
            write_bytes(out / MORPHOKINETICS_CSV, events.to_csv(index=False).encode())
            figures.plot_event_times(events, out / "morphokinetics.png")
    return result


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="analyze_latents.py", description=__doc__.split("\n")[0])
    parser.add_argument("--latents", type=str, required=True,
                        help="folder written by extract_latents.py --out (required; no default)")
    parser.add_argument("--out", type=str, required=True,
                        help="folder for summary.json, CSVs and PNGs, written whole: beside it, then swapped in "
                             "(required)")
    parser.add_argument("--source", type=str, default="auto", choices=["auto", "trajectories", "clips"],
                        help="latents for the trajectory analyses: auto = trajectories/ if present else each "
                             "clip's z_seq (default: auto)")
    parser.add_argument("--split", type=str, default="all", choices=("all",) + ROW_SPLITS,
                        help="analyse only the recordings of this split (the extraction's split column): val = the "
                             "wells the training run held out, as a supervised run (--phase_weight) must be "
                             "judged (default: %(default)s)")
    parser.add_argument("--trim_start", type=int, default=0,
                        help="drop the first N frames of each trajectory before analysing it: the encoder state "
                             "starts from zero, so the first steps of a recording move fast (default: 0)")
    parser.add_argument("--tphate_n_pca", "--pca_dims", type=int, default=30,
                        help="T-PHATE's n_pca: PCA dimensions of its kNN graph; its autocorrelation view uses the "
                             "latents themselves (default: %(default)s)")
    parser.add_argument("--tphate_knn", type=int, default=5, help="T-PHATE k nearest neighbours (default: 5)")
    parser.add_argument("--outlier_threshold", type=float, default=3.5,
                        help="|modified z-score| above which an embryo is an outlier, > 0 (default: 3.5)")
    parser.add_argument("--ph_max_points", type=int, default=500,
                        help="points per trajectory for ripser, at least 10; longer ones are greedily subsampled "
                             "(default: 500)")
    parser.add_argument("--betti_points", type=int, default=100, help="radii in the Betti curves (default: 100)")
    parser.add_argument("--cv_folds", type=int, default=5,
                        help="cross-validation folds (fewer when there are fewer groups) (default: 5)")
    parser.add_argument("--probe_max_frames", type=int, default=5000,
                        help="frames each probe fold fits on at most (a seeded sample of its training part), at "
                             "least 50; it predicts every frame of its held-out embryos (default: %(default)s)")
    parser.add_argument("--max_embryo_plots", type=int, default=100,
                        help="per-embryo T-PHATE figures to draw; embeddings of all go to CSV (default: 100)")
    add_seed_arg(parser, "T-PHATE, subsampling and cross-validation")
    return parser


def check_inputs(args: argparse.Namespace) -> tuple[bool, dict[str, dict]]:
    """Before anything is written: flag ranges, --out, and the latents folder (each subfolder read is whole and of
    one extraction, none is being written or was left half-swapped, and trajectories/ and clips/ come from one
    checkpoint). Returns (whether trajectories/ is analysed, {subfolder read: its info.json})."""
    latents, out = Path(args.latents), Path(args.out).resolve()
    check_seed(args.seed)
    check_numbers(args, finite=("outlier_threshold",), above=("outlier_threshold",), at_least={
        "trim_start": 0, "tphate_n_pca": 1, "tphate_knn": 2, "cv_folds": 2, "betti_points": 2, "probe_max_frames": 50,
        "ph_max_points": 10, "max_embryo_plots": 0})
    if not latents.is_dir():
        raise InputError(f"--latents {latents} is not a folder; point it at the --out folder of extract_latents.py")
    if out == latents.resolve() or out in latents.resolve().parents or any(
            out.is_relative_to((latents / name).resolve()) for name in (TRAJECTORY_DIR, CLIPS_DIR)):
        raise InputError(f"--out {args.out} would replace or sit inside the latents it reads ({latents}); choose "
                         "another folder")
    for name in (TRAJECTORY_DIR, CLIPS_DIR):
        if problem := OutputFolder(latents / name, "--out", "extraction", PATTERNS[name]).unfinished():
            raise InputError(problem)
    has_traj, has_clips = ((latents / name).is_dir() for name in (TRAJECTORY_DIR, CLIPS_DIR))
    if not (has_traj or has_clips):
        raise InputError(f"{latents}: no {TRAJECTORY_DIR}/ or {CLIPS_DIR}/; point --latents at the --out folder of "
                         "extract_latents.py")
    if args.source == "trajectories" and not has_traj:
        raise InputError(f"{latents / TRAJECTORY_DIR} is missing; run extract_latents.py --mode trajectory or use "
                         "--source auto")
    if args.source == "clips" and not has_clips:
        raise InputError(f"{latents / CLIPS_DIR} is missing; run extract_latents.py --mode clips")
    use_traj = has_traj and args.source != "clips"
    infos = {name: read_info(latents / name) for name, read in ((TRAJECTORY_DIR, use_traj), (CLIPS_DIR, has_clips))
             if read}
    if len(infos) == 2:
        check_one_checkpoint(latents, infos)
    return use_traj, infos


def main(args: argparse.Namespace, stop: StopSignal | None = None) -> dict:
    """Check everything, then run every analysis the latents allow into a staging folder beside --out and swap it
    in whole (summary.json last); returns the summary. A stop signal (`stop`) leaves --out as it was."""
    latents = Path(args.latents)
    use_traj, infos = check_inputs(args)
    output = OutputFolder(args.out, "--out", "analysis", OUTPUTS, stop).check()
    clips = load_clips(latents) if CLIPS_DIR in infos else None
    trajectories = load_trajectories(latents, infos[TRAJECTORY_DIR][EXTRACTION_KEY]) if use_traj else \
        trajectories_from_clips(clips)
    if args.split != "all":  # e.g. only the wells the training run held out
        trajectories = [t for t in trajectories if str(t["meta"].get("split", "")) == args.split]
    n_loaded = len(trajectories)
    trajectories = trim_start(trajectories, args.trim_start)
    if not trajectories:
        of_split = "" if args.split == "all" else f" of split {args.split}"
        raise InputError(f"{latents}: no trajectory{of_split} with at least {args.trim_start + 3} frames (loaded "
                         f"{n_loaded}); lower --trim_start, choose another --split or check the extraction")
    summary = {"latents": str(latents), "trajectory_source": "trajectories" if use_traj else "clips (pooled z_seq)",
               "split": args.split, "trim_start": args.trim_start,
               "trajectories_dropped_as_too_short": n_loaded - len(trajectories),
               **{f"extraction_{name}": {k: v for k, v in i.items() if k != "files"} for name, i in infos.items()}}
    with output as out:
        summary["trajectories"] = analyse_trajectories(trajectories, out, args)
        summary["classification"] = analyse_classifier(clips, out)
        summary["probes"] = analyse_probes(trajectories, out, args)
        summary["phase_probe"] = probes.legacy_phase_probe(summary["probes"].get("phase"))
        figures.plot_probes(summary["probes"], out / "probes.png")
        summary["figures"] = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
        write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=_json_default).encode())
        output.commit()
    return summary


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _margin(value: float | None) -> str:
    return "missing" if value is None else f"{value:+.3f}"


def report(args: argparse.Namespace) -> int:
    """main() for the command line, a stop signal ending it at once (nothing to save): run it and print one line of
    results."""
    with stop_signals(StopSignal(f"analysis stopped, nothing of it kept; {args.out} is as it was")) as stop:
        result = main(args, stop)
    cls = result["classification"]
    margins = [f"{name} {probe['metric']} {probe['linear']['trained'][probe['metric']]:.3f} (over the untrained "
               f"model {_margin(probe['margin_over_untrained'])}, over raw pixels "
               f"{_margin(probe['margin_over_pixels'])})" for name, probe in result["probes"].items() if probe]
    print(f"analysed {result['trajectories']['n_embryos']} trajectories -> {Path(args.out) / 'summary.json'}; "
          f"outliers: {len(result['trajectories']['outliers']['embryos'])}"
          + (f"; classifier AUC {cls['roc_auc']:.3f}" if cls and cls.get("roc_auc") is not None else "")
          + "".join(f"; {m}" for m in margins))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("analyze_latents.py", report, get_args_parser().parse_args()))
