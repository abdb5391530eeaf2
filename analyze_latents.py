"""Analyse latents written by extract_latents.py: T-PHATE, speed, outliers, topology, classifier, phase probe.

Reads `--latents DIR` (its `trajectories/` and/or `clips/` folders) and writes to `--out DIR`:
`summary.json` (every number below), CSV tables and PNG figures.

- T-PHATE (`tphate`) of each trajectory after PCA to `--pca_dims`: `tphate/<embryo>.png` coloured by time
  and phase, `tphate_embeddings.csv`; `population.png`: all trajectories in one shared PCA plane.
- Per embryo (`per_embryo.csv`): speed curve ||z(t+1) - z(t)|| (`speeds.csv`, `speed_curves.png`), trajectory
  length, start-end distance; robust (median/MAD) outliers (`outliers.csv`, `outliers.png`).
- Persistent homology (`ripser`): H0/H1 diagrams, total persistence, persistence entropy, Betti curves
  (`persistence_diagrams.csv`, `betti_curves.csv`, `persistence.png`).
- With labels: accuracy, balanced accuracy, ROC AUC, confusion matrix, ROC curve (`roc_curve.png`,
  `confusion_matrix.png`), from the model's classifier probabilities when the clips have them, else from a
  logistic regression on pooled latents, cross-validated with folds grouped by patient (reported too, as
  `latent_probe`, next to the classifier's own metrics, which are also given per split).
- With phases: a linear probe latent -> phase, cross-validated with folds grouped by embryo, against the
  majority-class baseline.

Trajectories come from `trajectories/` (whole recordings); without it, each clip's pooled z_seq is one
short trajectory.
"""

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from frames_io import PHASES, patient_of  # noqa: E402

# Folder and file names written by extract_latents.py (kept in sync by tests/test_latents.py).
TRAJECTORY_DIR = "trajectories"
CLIPS_DIR = "clips"
METADATA_CSV = "metadata.csv"
OUTLIER_COLUMNS = ("trajectory_length", "start_end_distance", "mean_speed", "max_speed")


class AnalysisError(ValueError):
    """Bad or missing latents input; the message names the file and what to do."""


# ----------------------------------------------------------------------------- loading

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
        raise AnalysisError(f"{path}: cannot parse CSV ({reason}); re-run extract_latents.py") from None
    missing = [c for c in required if c not in meta.columns]
    if missing:
        raise AnalysisError(f"{path}: missing columns {missing}; it must come from extract_latents.py")
    return meta


def load_trajectories(latents_dir: Path) -> list[dict]:
    """Per-embryo trajectories: dicts with name, z (n, C), frame_indices, hours (NaN = unknown), phase, meta."""
    folder = latents_dir / TRAJECTORY_DIR
    meta = read_metadata(folder / METADATA_CSV, ("file", "cell_id", "label"))
    trajectories = []
    for _, row in meta.iterrows():
        path = folder / str(row["file"])
        if not path.is_file():
            raise AnalysisError(f"{folder / METADATA_CSV}: row for {row['cell_id']} names {path}, which is missing; "
                                "re-run extract_latents.py --mode trajectory")
        with np.load(path) as data:
            if not {"z", "frame_indices", "hours", "phase"} <= set(data.files):
                raise AnalysisError(f"{path}: needs arrays z, frame_indices, hours, phase; re-run extract_latents.py")
            z = data["z"].astype(np.float64)
            trajectories.append({
                "name": path.stem, "z": z, "frame_indices": data["frame_indices"],
                "hours": data["hours"].astype(np.float64), "phase": data["phase"].astype(str),
                "meta": row.to_dict(),
            })
    return trajectories


def load_clips(latents_dir: Path) -> dict:
    """Clip-level latents: meta DataFrame, z_last (N, C), z_seq (N, T, C), probs (N, K) or None."""
    folder = latents_dir / CLIPS_DIR
    meta = read_metadata(folder / METADATA_CSV, ("cell_id", "label", "frame_indices"))
    probs_path = folder / "probs.npy"
    for name in ("z_last_pooled.npy", "z_seq_pooled.npy"):
        if not (folder / name).is_file():
            raise AnalysisError(f"{folder / name} is missing; re-run extract_latents.py --mode clips")
    return {
        "meta": meta,
        "z_last": np.load(folder / "z_last_pooled.npy").astype(np.float64),
        "z_seq": np.load(folder / "z_seq_pooled.npy").astype(np.float64),
        "probs": np.load(probs_path).astype(np.float64) if probs_path.is_file() else None,
    }


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
            "meta": row.to_dict(),
        })
    return trajectories


def trim_start(trajectories: list[dict], n: int) -> list[dict]:
    """Drop the first n frames of every trajectory (the encoder state warming up from zero); trajectories
    left with fewer than 3 frames are dropped."""
    if n == 0:
        return trajectories
    keys = ("z", "frame_indices", "hours", "phase")
    return [{**t, **{k: t[k][n:] for k in keys}} for t in trajectories if len(t["z"]) - n >= 3]


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


# ----------------------------------------------------------------------------- geometry

def reduce_dims(z: np.ndarray, n_components: int = 30) -> np.ndarray:
    """PCA of a trajectory (n, C) to at most n_components (and at most n - 1) dimensions."""
    k = max(1, min(n_components, z.shape[0] - 1, z.shape[1]))
    return PCA(n_components=k, svd_solver="full").fit_transform(z)


def tphate_embedding(z: np.ndarray, pca_dims: int = 30, knn: int = 5, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D T-PHATE embedding of one trajectory (n, C) -> ((n, 2), method).

    method is "tphate"; for trajectories too short for a kNN graph (< 2 * knn points) it is "pca",
    and "constant" when the trajectory does not move at all (embedding all zeros).
    """
    n = z.shape[0]
    if n < 2 or np.allclose(z, z[0]):
        return np.zeros((n, 2)), "constant"
    reduced = reduce_dims(z, pca_dims)
    if n < 2 * knn:
        out = np.zeros((n, 2))
        out[:, :min(2, reduced.shape[1])] = reduced[:, :2]
        return out, "pca"
    import tphate  # imported here: it takes seconds and only this function needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        operator = tphate.TPHATE(n_components=2, knn=knn, n_pca=None, n_landmark=None, verbose=0,
                                 random_state=seed, n_jobs=1)
        embedding = operator.fit_transform(reduced)
    return np.asarray(embedding, dtype=np.float64), "tphate"


def speed_curve(z: np.ndarray) -> np.ndarray:
    """Euclidean step length ||z(t+1) - z(t)|| of a trajectory (n, C) -> (n - 1,)."""
    return np.linalg.norm(np.diff(z, axis=0), axis=1)


def trajectory_stats(z: np.ndarray) -> dict:
    """Length, start-end distance, straightness and speed statistics of a trajectory (n, C)."""
    speeds = speed_curve(z)
    length = float(speeds.sum())
    start_end = float(np.linalg.norm(z[-1] - z[0]))
    return {
        "n_frames": int(z.shape[0]),
        "trajectory_length": length,
        "start_end_distance": start_end,
        "straightness": start_end / length if length > 0 else float("nan"),
        "mean_speed": float(speeds.mean()) if len(speeds) else float("nan"),
        "median_speed": float(np.median(speeds)) if len(speeds) else float("nan"),
        "max_speed": float(speeds.max()) if len(speeds) else float("nan"),
    }


def robust_z(values: np.ndarray) -> np.ndarray:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz and Hoaglin); MAD 0 falls back to 1.2533 x mean AD."""
    values = np.asarray(values, dtype=np.float64)
    median = np.nanmedian(values)
    deviation = np.abs(values - median)
    mad = np.nanmedian(deviation)
    if mad > 0:
        return 0.6745 * (values - median) / mad
    mean_ad = np.nanmean(deviation)
    if mean_ad > 0:
        return (values - median) / (1.253314 * mean_ad)
    return np.zeros_like(values)


def flag_outliers(table: pd.DataFrame, columns=OUTLIER_COLUMNS, threshold: float = 3.5) -> pd.DataFrame:
    """Add robust_z_<col>, max_abs_robust_z and is_outlier (any |robust z| > threshold) to a per-embryo table."""
    out = table.copy()
    scores = []
    for column in columns:
        out[f"robust_z_{column}"] = robust_z(out[column].to_numpy())
        scores.append(np.abs(out[f"robust_z_{column}"].to_numpy()))
    out["max_abs_robust_z"] = np.nanmax(np.stack(scores, axis=1), axis=1) if len(out) else []
    out["is_outlier"] = out["max_abs_robust_z"] > threshold
    return out


# ----------------------------------------------------------------------------- topology

def persistence_diagrams(z: np.ndarray, maxdim: int = 1, max_points: int = 500) -> list[np.ndarray]:
    """ripser H0..H<maxdim> diagrams of a point cloud (n, C); above max_points ripser's greedy (furthest-point,
    deterministic) subsample of max_points points is used."""
    import ripser  # imported here: only the topology step needs it

    n_perm = max_points if z.shape[0] > max_points else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more columns than rows": expected for short trajectories
        dgms = ripser.ripser(z, maxdim=maxdim, n_perm=n_perm)["dgms"]
    return [np.asarray(d, dtype=np.float64) for d in dgms]


def _finite_lifetimes(diagram: np.ndarray) -> np.ndarray:
    finite = diagram[np.isfinite(diagram[:, 1])] if len(diagram) else diagram.reshape(0, 2)
    return finite[:, 1] - finite[:, 0]


def total_persistence(diagram: np.ndarray) -> float:
    """Sum of finite bar lengths (death - birth); the infinite H0 bar is left out."""
    return float(_finite_lifetimes(diagram).sum())


def persistence_entropy(diagram: np.ndarray) -> float:
    """Shannon entropy -sum p log p of finite bar lengths normalised to sum 1 (0 for <= 1 bar)."""
    lifetimes = _finite_lifetimes(diagram)
    lifetimes = lifetimes[lifetimes > 0]
    if len(lifetimes) < 2:
        return 0.0
    p = lifetimes / lifetimes.sum()
    return float(-(p * np.log(p)).sum())


def betti_curve(diagram: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Number of bars alive (birth <= r < death) at each radius."""
    if len(diagram) == 0:
        return np.zeros(len(radii), dtype=np.int64)
    birth, death = diagram[:, 0][:, None], diagram[:, 1][:, None]
    return ((birth <= radii[None]) & (radii[None] < death)).sum(axis=0)


# ----------------------------------------------------------------------------- supervised

def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, ROC AUC, confusion matrix and (binary) ROC curve from probabilities (N, K)."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" when one class is labelled
        balanced = float(balanced_accuracy_score(y_true, pred))
    out = {
        "n": int(len(y_true)),
        "class_counts": {str(c): int((y_true == c).sum()) for c in range(n_classes)},
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": balanced,
        "confusion_matrix": confusion_matrix(y_true, pred, labels=list(range(n_classes))).tolist(),
        "roc_auc": None,
        "roc_curve": None,
    }
    if len(np.unique(y_true)) < 2:
        out["roc_auc_note"] = "only one class among the labelled items: ROC AUC is undefined"
        return out
    if n_classes == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probs[:, 1]))
        fpr, tpr, _ = roc_curve(y_true, probs[:, 1])
        out["roc_curve"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    else:
        out["roc_auc"] = float(roc_auc_score(y_true, probs, multi_class="ovr", labels=list(range(n_classes))))
    return out


def _linear_model(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


def _fit_predict_proba(x_train, y_train, x_test, classes: np.ndarray, seed: int) -> np.ndarray:
    """Probabilities (n_test, len(classes)) from a standardised logistic regression; one-class folds predict it."""
    probs = np.zeros((len(x_test), len(classes)))
    present = np.unique(y_train)
    if len(present) == 1:
        probs[:, np.searchsorted(classes, present[0])] = 1.0
        return probs
    model = _linear_model(seed).fit(x_train, y_train)
    probs[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(x_test)
    return probs


def grouped_cv_probabilities(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
                             seed: int = 0) -> tuple[np.ndarray, int]:
    """Out-of-fold probabilities (N, n_classes) of a logistic regression, folds grouped (and stratified) by group.

    Returns (probs, folds used). Needs at least two groups.
    """
    classes = np.arange(int(y.max()) + 1)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise AnalysisError("cross-validation needs at least two patients/groups")
    folds = min(n_splits, n_groups)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(y), len(classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes per fold warn in StratifiedGroupKFold
        for train, test in splitter.split(x, y, groups):
            probs[test] = _fit_predict_proba(x[train], y[train], x[test], classes, seed)
    return probs, folds


def ordered_phases(names) -> list[str]:
    """Distinct phase names, known ones in developmental order, then unknown ones sorted; '' dropped."""
    present = {str(n) for n in names} - {""}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def phase_probe(x: np.ndarray, phases: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0) -> dict:
    """Linear probe latent (N, C) -> phase, GroupKFold by embryo; accuracy vs the train-fold majority class."""
    phases = np.asarray(phases).astype(str)
    classes = np.array(ordered_phases(phases))
    y = np.array([np.flatnonzero(classes == p)[0] for p in phases])
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise AnalysisError("the phase probe needs at least two embryos with phases")
    folds = min(n_splits, n_groups)
    pred = np.zeros(len(y), dtype=int)
    baseline = np.zeros(len(y), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes on tiny folds
        for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
            pred[test] = _fit_predict_proba(x[train], y[train], x[test], np.arange(len(classes)), seed).argmax(1)
            baseline[test] = np.bincount(y[train], minlength=len(classes)).argmax()
    return {
        "n_frames": int(len(y)), "n_embryos": int(n_groups), "folds": int(folds),
        "classes": classes.tolist(),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "majority_baseline_accuracy": float(accuracy_score(y, baseline)),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),
    }


# ----------------------------------------------------------------------------- figures

def _time_axis(traj: dict) -> tuple[np.ndarray, str]:
    """Hours when every frame has one, else frame index."""
    if len(traj["hours"]) and np.isfinite(traj["hours"]).all():
        return traj["hours"], "hours"
    return traj["frame_indices"].astype(np.float64), "frame index"


def phase_palette(phases: np.ndarray) -> dict:
    """One colour per phase name, the same in every figure, running along the turbo colour map in
    developmental order; '' (no phase) is light grey."""
    order = ordered_phases(phases)
    cmap = plt.get_cmap("turbo")
    return {"": (0.8, 0.8, 0.8, 1.0), **{p: cmap(0.05 + 0.9 * i / max(len(order) - 1, 1)) for i, p in enumerate(order)}}


def _phase_legend(ax, palette: dict, present) -> None:
    present = set(present)
    for phase, color in palette.items():
        if phase in present:
            ax.scatter([], [], color=color, label=phase or "(none)")
    ax.legend(loc="best", fontsize=6, ncol=2)


def plot_tphate(traj: dict, embedding: np.ndarray, method: str, palette: dict, path: Path) -> None:
    """One trajectory's 2-D embedding coloured by time, and by phase when annotated."""
    has_phase = bool(len(traj["phase"])) and (traj["phase"] != "").any()
    fig, axes = plt.subplots(1, 2 if has_phase else 1, figsize=(11 if has_phase else 5.5, 4.5), squeeze=False)
    time, time_label = _time_axis(traj)
    ax = axes[0, 0]
    ax.plot(embedding[:, 0], embedding[:, 1], color="0.8", lw=0.8, zorder=1)
    points = ax.scatter(embedding[:, 0], embedding[:, 1], c=time, cmap="viridis", s=12, zorder=2)
    ax.scatter(*embedding[0], marker="s", s=50, facecolor="none", edgecolor="k", label="start")
    ax.scatter(*embedding[-1], marker="*", s=90, color="k", label="end")
    fig.colorbar(points, ax=ax, label=time_label)
    ax.set_title(f"{traj['name']}: {method.upper()} by time")
    ax.legend(loc="best", fontsize=7)
    if has_phase:
        ax = axes[0, 1]
        ax.plot(embedding[:, 0], embedding[:, 1], color="0.8", lw=0.8, zorder=1)
        ax.scatter(embedding[:, 0], embedding[:, 1], c=[palette[p] for p in traj["phase"]], s=12, zorder=2)
        _phase_legend(ax, palette, traj["phase"])
        ax.set_title("by developmental phase")
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_population(trajectories: list[dict], palette: dict, path: Path, max_points: int = 20000,
                    seed: int = 0) -> dict:
    """All trajectories in one PCA plane fitted on all frames: lines by time, points by phase or label."""
    all_z = np.concatenate([t["z"] for t in trajectories])
    rng = np.random.default_rng(seed)
    fit_rows = rng.choice(len(all_z), size=min(max_points, len(all_z)), replace=False)
    pca = PCA(n_components=min(2, all_z.shape[1]), svd_solver="full").fit(all_z[fit_rows])
    has_phase = any((t["phase"] != "").any() for t in trajectories if len(t["phase"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    norm_time_points = None
    for traj in trajectories:
        xy = pca.transform(traj["z"])
        if xy.shape[1] == 1:
            xy = np.c_[xy, np.zeros(len(xy))]
        time = np.linspace(0, 1, len(xy))
        axes[0].plot(xy[:, 0], xy[:, 1], color="0.85", lw=0.5, zorder=1)
        norm_time_points = axes[0].scatter(xy[:, 0], xy[:, 1], c=time, cmap="viridis", s=3, zorder=2)
        if has_phase:
            axes[1].scatter(xy[:, 0], xy[:, 1], c=[palette[p] for p in traj["phase"]], s=3)
        else:
            label = traj["meta"].get("label")
            axes[1].plot(xy[:, 0], xy[:, 1], lw=0.8,
                         color={0: "tab:orange", 1: "tab:blue"}.get(int(label) if _is_number(label) else -1, "0.5"))
    if norm_time_points is not None:
        fig.colorbar(norm_time_points, ax=axes[0], label="fraction of recording")
    if has_phase:
        _phase_legend(axes[1], palette, np.concatenate([t["phase"] for t in trajectories]))
        axes[1].set_title("coloured by developmental phase")
    else:
        for label, color in (("0 (empty well)", "tab:orange"), ("1 (embryo)", "tab:blue"), ("unknown", "0.5")):
            axes[1].plot([], [], color=color, label=label)
        axes[1].legend(fontsize=7)
        axes[1].set_title("coloured by label")
    axes[0].set_title(f"{len(trajectories)} trajectories, shared PCA plane, by time")
    ratio = pca.explained_variance_ratio_
    for ax in axes:
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var)" if len(ratio) > 1 else "")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"explained_variance_ratio": [float(r) for r in ratio]}


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def plot_speed_curves(trajectories: list[dict], speeds: list[np.ndarray], outlier_names: set, path: Path) -> None:
    """Speed ||z(t+1) - z(t)|| over time for every embryo; outliers in red, the median curve in black."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x_label = "frame index"
    for traj, speed in zip(trajectories, speeds, strict=True):
        time, x_label = _time_axis(traj)
        outlier = traj["name"] in outlier_names
        ax.plot(time[1:], speed, color="tab:red" if outlier else "0.6", lw=1.2 if outlier else 0.6,
                alpha=1.0 if outlier else 0.5, zorder=3 if outlier else 1)
    same_length = len({len(s) for s in speeds}) == 1
    if same_length and speeds and len(speeds[0]):
        time, _ = _time_axis(trajectories[0])
        ax.plot(time[1:], np.median(np.stack(speeds), axis=0), color="k", lw=2, label="median", zorder=4)
    ax.plot([], [], color="tab:red", label="outlier")
    ax.set_xlabel(x_label)
    ax.set_ylabel("latent speed ||z(t+1) - z(t)||")
    ax.set_title("latent speed per embryo")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_outliers(table: pd.DataFrame, threshold: float, path: Path) -> None:
    """Trajectory length vs start-end distance, and each embryo's largest |robust z|; outliers marked."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    normal, outlier = table[~table["is_outlier"]], table[table["is_outlier"]]
    axes[0].scatter(normal["trajectory_length"], normal["start_end_distance"], s=14, color="tab:blue", label="embryo")
    axes[0].scatter(outlier["trajectory_length"], outlier["start_end_distance"], s=40, color="tab:red",
                    marker="x", label="outlier")
    for _, row in outlier.iterrows():
        axes[0].annotate(str(row["embryo"]), (row["trajectory_length"], row["start_end_distance"]), fontsize=7)
    axes[0].set_xlabel("trajectory length")
    axes[0].set_ylabel("start-end distance")
    axes[0].legend()
    order = np.argsort(-table["max_abs_robust_z"].to_numpy())
    axes[1].bar(np.arange(len(table)), table["max_abs_robust_z"].to_numpy()[order],
                color=np.where(table["is_outlier"].to_numpy()[order], "tab:red", "tab:blue"))
    axes[1].axhline(threshold, color="k", ls="--", label=f"threshold {threshold}")
    axes[1].set_xlabel("embryos, sorted")
    axes[1].set_ylabel("max |robust z|")
    axes[1].set_title("over " + ", ".join(OUTLIER_COLUMNS).replace("_", " "), fontsize=8)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_persistence(names: list[str], diagrams: list[list[np.ndarray]], radii: np.ndarray,
                     betti: np.ndarray, example: int, path: Path) -> None:
    """Example H0/H1 diagram, all embryos' H1 bars, and Betti-0/1 curves (each embryo faint, mean bold)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    top = radii[-1] if len(radii) else 1.0
    for ax in axes[:2]:
        ax.plot([0, top], [0, top], color="0.6", lw=0.8)
        ax.set_xlabel("birth")
        ax.set_ylabel("death")
    for dim, color in ((0, "tab:blue"), (1, "tab:orange")):
        dgm = diagrams[example][dim]
        if len(dgm):
            deaths = np.where(np.isfinite(dgm[:, 1]), dgm[:, 1], top)
            axes[0].scatter(dgm[:, 0], deaths, s=14, color=color, label=f"H{dim}")
    axes[0].set_title(f"{names[example]} (largest H1 persistence)")
    axes[0].legend()
    for dgms in diagrams:
        if len(dgms[1]):
            axes[1].scatter(dgms[1][:, 0], dgms[1][:, 1], s=6, color="tab:orange", alpha=0.4)
    axes[1].set_title("H1 bars of all embryos")
    for dim, color in ((0, "tab:blue"), (1, "tab:orange")):
        for curve in betti[:, dim]:
            axes[2].plot(radii, curve, color=color, alpha=0.15, lw=0.6)
        axes[2].plot(radii, betti[:, dim].mean(axis=0), color=color, lw=2, label=f"mean Betti-{dim}")
    axes[2].set_yscale("symlog")
    axes[2].set_xlabel("radius")
    axes[2].set_ylabel("Betti number")
    axes[2].legend()
    axes[2].set_title("Betti curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_classifier(metrics: dict, title: str, roc_path: Path, cm_path: Path) -> list[str]:
    """ROC curve (binary) and confusion matrix figures; returns the files written."""
    written = []
    if metrics["roc_curve"] is not None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(metrics["roc_curve"]["fpr"], metrics["roc_curve"]["tpr"], lw=2,
                label=f"AUC = {metrics['roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], color="0.6", ls="--")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(roc_path, dpi=100)
        plt.close(fig)
        written.append(roc_path.name)
    cm = np.asarray(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > cm.max() / 2 else "black")
    ax.set_xticks(range(len(cm)))
    ax.set_yticks(range(len(cm)))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {metrics['accuracy']:.3f})", fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(cm_path, dpi=100)
    plt.close(fig)
    written.append(cm_path.name)
    return written


# ----------------------------------------------------------------------------- steps

def analyse_trajectories(trajectories: list[dict], out: Path, args) -> tuple[pd.DataFrame, dict]:
    """T-PHATE, speed, stats, outliers and topology of every trajectory; writes CSVs and figures."""
    from tqdm import tqdm

    (out / "tphate").mkdir(parents=True, exist_ok=True)
    rows, speeds, diagrams, embedding_rows, speed_rows = [], [], [], [], []
    methods = {}
    palette = phase_palette(np.concatenate([t["phase"] for t in trajectories]))
    for k, traj in enumerate(tqdm(trajectories, desc="trajectories", unit="embryo", disable=None)):
        z = traj["z"]
        embedding, method = tphate_embedding(z, args.pca_dims, args.tphate_knn, args.seed)
        methods[method] = methods.get(method, 0) + 1
        if k < args.max_embryo_plots:
            plot_tphate(traj, embedding, method, palette, out / "tphate" / f"{traj['name']}.png")
        speed = speed_curve(z)
        speeds.append(speed)
        dgms = persistence_diagrams(z, maxdim=1, max_points=args.ph_max_points)
        diagrams.append(dgms)
        h1_life = _finite_lifetimes(dgms[1])
        rows.append({
            "embryo": traj["name"], "cell_id": traj["meta"].get("cell_id"), "label": traj["meta"].get("label"),
            **trajectory_stats(z), "embedding_method": method,
            "h0_total_persistence": total_persistence(dgms[0]), "h1_total_persistence": total_persistence(dgms[1]),
            "h0_persistence_entropy": persistence_entropy(dgms[0]),
            "h1_persistence_entropy": persistence_entropy(dgms[1]),
            "h1_n_bars": int(len(dgms[1])), "h1_max_persistence": float(h1_life.max()) if len(h1_life) else 0.0,
        })
        embedding_rows.append(pd.DataFrame({
            "embryo": traj["name"], "frame_index": traj["frame_indices"], "hours": traj["hours"],
            "phase": traj["phase"], "dim_1": embedding[:, 0], "dim_2": embedding[:, 1], "method": method}))
        speed_rows.append(pd.DataFrame({"embryo": traj["name"], "frame_index": traj["frame_indices"][1:],
                                        "hours": traj["hours"][1:], "speed": speed}))
    table = flag_outliers(pd.DataFrame(rows), OUTLIER_COLUMNS, args.outlier_threshold)
    table.to_csv(out / "per_embryo.csv", index=False)
    table[table["is_outlier"]].to_csv(out / "outliers.csv", index=False)
    pd.concat(embedding_rows).to_csv(out / "tphate_embeddings.csv", index=False)
    pd.concat(speed_rows).to_csv(out / "speeds.csv", index=False)
    outlier_names = set(table.loc[table["is_outlier"], "embryo"])
    plot_speed_curves(trajectories, speeds, outlier_names, out / "speed_curves.png")
    plot_outliers(table, args.outlier_threshold, out / "outliers.png")
    population = plot_population(trajectories, palette, out / "population.png", seed=args.seed)

    finite_deaths = [d[np.isfinite(d[:, 1]), 1] for dgms in diagrams for d in dgms if len(d)]
    top = max([float(f.max()) for f in finite_deaths if len(f)], default=1.0)
    radii = np.linspace(0.0, top, args.betti_points)
    betti = np.stack([[betti_curve(d, radii) for d in dgms[:2]] for dgms in diagrams])  # (E, 2, R)
    pd.concat([pd.DataFrame({"embryo": name, "dim": dim, "birth": dgm[:, 0], "death": dgm[:, 1]})
               for name, dgms in zip(table["embryo"], diagrams, strict=True) for dim, dgm in enumerate(dgms)]
              ).to_csv(out / "persistence_diagrams.csv", index=False)
    pd.concat([pd.DataFrame({"embryo": name, "radius": radii, "betti_0": b[0], "betti_1": b[1]})
               for name, b in zip(table["embryo"], betti, strict=True)]).to_csv(out / "betti_curves.csv", index=False)
    example = int(table["h1_total_persistence"].to_numpy().argmax())
    plot_persistence(list(table["embryo"]), diagrams, radii, betti, example, out / "persistence.png")

    numeric = ["n_frames", "trajectory_length", "start_end_distance", "straightness", "mean_speed", "max_speed",
               "h0_total_persistence", "h1_total_persistence", "h0_persistence_entropy", "h1_persistence_entropy",
               "h1_max_persistence"]
    summary = {
        "n_embryos": len(trajectories),
        "embedding_methods": methods,
        "tphate": {"pca_dims": args.pca_dims, "knn": args.tphate_knn, "seed": args.seed},
        "statistics_median": {c: _json_float(table[c].median()) for c in numeric},
        "outliers": {"threshold": args.outlier_threshold, "columns": list(OUTLIER_COLUMNS),
                     "embryos": sorted(outlier_names)},
        "population_pca": population,
        "betti_radii": [float(r) for r in radii],
        "mean_betti_0": betti[:, 0].mean(axis=0).tolist(),
        "mean_betti_1": betti[:, 1].mean(axis=0).tolist(),
        "per_embryo": json.loads(table.to_json(orient="records")),
    }
    return table, summary


def _json_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def analyse_labels(trajectories: list[dict], clips: dict | None, out: Path, args) -> dict | None:
    """Empty-well/embryo metrics: the model's classifier probabilities when present, else (and in addition,
    as `latent_probe`) a logistic regression on pooled latents cross-validated with folds grouped by patient."""
    if clips is not None:
        meta, features, feature_name = clips["meta"], clips["z_last"], "spatially pooled z_last of each clip"
    else:
        meta = pd.DataFrame([t["meta"] for t in trajectories])
        features, feature_name = np.stack([t["z"].mean(axis=0) for t in trajectories]), "time-mean of each trajectory"
    labels = known_labels(meta)
    keep = labels >= 0
    if not keep.any():
        return None
    probe = None
    if len(np.unique(labels[keep])) >= 2 and len(np.unique(patient_groups(meta)[keep])) >= 2:
        groups = patient_groups(meta)[keep]
        probs, folds = grouped_cv_probabilities(features[keep], labels[keep], groups, args.cv_folds, args.seed)
        probe = classification_metrics(labels[keep], probs)
        probe["source"] = (f"logistic regression on the {feature_name}, {folds}-fold cross-validation grouped by "
                           f"patient ({len(np.unique(groups))} patients)")
    if clips is not None and clips["probs"] is not None:
        metrics = classification_metrics(labels[keep], clips["probs"][keep])
        metrics["source"] = "model classifier probabilities (clips/probs.npy)"
        splits = meta["split"].fillna("").astype(str).to_numpy()[keep] if "split" in meta.columns else None
        if splits is not None and len(set(splits)) > 1:  # training rows flatter the classifier: report each split
            metrics["by_split"] = {}
            for split in sorted(set(splits)):
                part = classification_metrics(labels[keep][splits == split], clips["probs"][keep][splits == split])
                part.pop("roc_curve")
                metrics["by_split"][split or "(none)"] = part
        if probe is not None:
            probe.pop("roc_curve")
            metrics["latent_probe"] = probe
    elif probe is not None:
        metrics = probe
        metrics["source"] += "; the latents hold no classifier probabilities (clips/probs.npy)"
    else:
        return {"source": None, "n": int(keep.sum()),
                "note": "labels have a single class or a single patient: no classifier can be evaluated"}
    metrics["figures"] = plot_classifier(metrics, metrics["source"][:70], out / "roc_curve.png",
                                         out / "confusion_matrix.png")
    return metrics


def analyse_phases(trajectories: list[dict], args) -> dict | None:
    """Linear probe latent -> phase over annotated frames, folds grouped by embryo."""
    xs, ys, groups = [], [], []
    for traj in trajectories:
        annotated = traj["phase"] != "" if len(traj["phase"]) else np.zeros(len(traj["z"]), dtype=bool)
        xs.append(traj["z"][annotated])
        ys.append(traj["phase"][annotated] if annotated.any() else np.array([], dtype=str))
        groups.append(np.full(int(annotated.sum()), traj["name"]))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    if len(y) == 0 or len(np.unique(g)) < 2:
        return None
    if len(y) > args.probe_max_frames:
        rows = np.sort(np.random.default_rng(args.seed).choice(len(y), args.probe_max_frames, replace=False))
        x, y, g = x[rows], y[rows], g[rows]
    return phase_probe(x, y, g, args.cv_folds, args.seed)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=True)
    parser.add_argument("--latents", type=str, required=True,
                        help="folder written by extract_latents.py --out (required; no default)")
    parser.add_argument("--out", type=str, required=True, help="folder for summary.json, CSVs and PNGs (required)")
    parser.add_argument("--source", type=str, default="auto", choices=["auto", "trajectories", "clips"],
                        help="latents for the trajectory analyses: auto = trajectories/ if present else each "
                             "clip's z_seq (default: auto)")
    parser.add_argument("--trim_start", type=int, default=0,
                        help="drop the first N frames of each trajectory before analysing it: the encoder state "
                             "starts from zero, so the first steps of a recording move fast (default: 0)")
    parser.add_argument("--pca_dims", type=int, default=30, help="PCA dimensions before T-PHATE (default: 30)")
    parser.add_argument("--tphate_knn", type=int, default=5, help="T-PHATE k nearest neighbours (default: 5)")
    parser.add_argument("--outlier_threshold", type=float, default=3.5,
                        help="|modified z-score| above which an embryo is an outlier (default: 3.5)")
    parser.add_argument("--ph_max_points", type=int, default=500,
                        help="points per trajectory for ripser; longer ones are greedily subsampled (default: 500)")
    parser.add_argument("--betti_points", type=int, default=100, help="radii in the Betti curves (default: 100)")
    parser.add_argument("--cv_folds", type=int, default=5,
                        help="cross-validation folds (fewer when there are fewer groups) (default: 5)")
    parser.add_argument("--probe_max_frames", type=int, default=20000,
                        help="frames sampled for the phase probe (default: 20000)")
    parser.add_argument("--max_embryo_plots", type=int, default=100,
                        help="per-embryo T-PHATE figures to draw; embeddings of all go to CSV (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed for T-PHATE, subsampling and CV (default: 0)")
    return parser


def main(args: argparse.Namespace) -> dict:
    """Run every analysis the latents allow and write summary.json; returns the summary."""
    latents, out = Path(args.latents), Path(args.out)
    has_traj = (latents / TRAJECTORY_DIR / METADATA_CSV).is_file()
    has_clips = (latents / CLIPS_DIR / METADATA_CSV).is_file()
    if not (has_traj or has_clips):
        raise AnalysisError(f"{latents}: no {TRAJECTORY_DIR}/{METADATA_CSV} or {CLIPS_DIR}/{METADATA_CSV}; "
                            "point --latents at the --out folder of extract_latents.py")
    if args.trim_start < 0 or args.pca_dims < 1 or args.tphate_knn < 2 or args.cv_folds < 2 or args.betti_points < 2:
        raise AnalysisError("need --trim_start >= 0, --pca_dims >= 1, --tphate_knn >= 2, --cv_folds >= 2 and "
                            "--betti_points >= 2")
    if args.source == "trajectories" and not has_traj:
        raise AnalysisError(f"{latents / TRAJECTORY_DIR / METADATA_CSV} is missing; run extract_latents.py "
                            "--mode trajectory or use --source auto")
    if args.source == "clips" and not has_clips:
        raise AnalysisError(f"{latents / CLIPS_DIR / METADATA_CSV} is missing; run extract_latents.py --mode clips")
    out.mkdir(parents=True, exist_ok=True)
    clips = load_clips(latents) if has_clips else None
    use_traj = has_traj and args.source != "clips"
    trajectories = load_trajectories(latents) if use_traj else trajectories_from_clips(clips)
    n_loaded = len(trajectories)
    trajectories = trim_start(trajectories, args.trim_start)
    if not trajectories:
        raise AnalysisError(f"{latents}: no trajectory with at least {args.trim_start + 3} frames "
                            f"(loaded {n_loaded}); lower --trim_start or check the extraction")

    summary = {"latents": str(latents), "trajectory_source": "trajectories" if use_traj else "clips (pooled z_seq)",
               "trim_start": args.trim_start, "trajectories_dropped_as_too_short": n_loaded - len(trajectories)}
    for name in (TRAJECTORY_DIR, CLIPS_DIR):
        info = latents / name / "info.json"
        if info.is_file():
            summary[f"extraction_{name}"] = json.loads(info.read_text())
    _, summary["trajectories"] = analyse_trajectories(trajectories, out, args)
    summary["classification"] = analyse_labels(trajectories, clips, out, args)
    summary["phase_probe"] = analyse_phases(trajectories, args)
    summary["figures"] = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    try:
        result = main(cli_args)
    except AnalysisError as error:
        print(f"analyze_latents.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    cls = result["classification"]
    probe = result["phase_probe"]
    print(f"analysed {result['trajectories']['n_embryos']} trajectories -> {cli_args.out}/summary.json; "
          f"outliers: {len(result['trajectories']['outliers']['embryos'])}"
          + (f"; classifier AUC {cls['roc_auc']}" if cls and cls.get("roc_auc") is not None else "")
          + (f"; phase probe {probe['accuracy']:.3f} vs baseline {probe['majority_baseline_accuracy']:.3f}"
             if probe else ""))
