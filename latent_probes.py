"""Supervised numbers of the latent analysis: classifier metrics, and probes beside their controls.

A probe (PROBES: developmental phase, hours since the first frame, the recording's label) predicts a target from
each feature set: the trained latents, the latents of an untrained model of the same config, and the raw pixels
of the same frames; beside the baseline that predicts the training folds' majority class (or mean). Two readouts
each: linear (logistic or ridge regression) and k nearest neighbours. Outer folds are grouped (by embryo, or by
patient for a per-recording probe); every free choice (logistic C, ridge strength, k, and the pixel control's
PCA width, from a grid that goes past the latent width) is made by grouped inner folds on the training part of
each outer fold, the same way for every feature set. Phases are also decoded per embryo into the most likely
sequence that never goes backwards, and from it the onset time of every phase (the morphokinetic events). A
feature set given as a string is missing, the string saying why. No torch; analyze_latents.py gathers the data.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cli import InputError
from frames_io import PHASES

FEATURE_SETS = ("trained", "untrained", "pixels")  # the latents, then the controls
BASELINE = "majority"  # the training folds' majority class (or mean)
READOUTS = ("linear", "knn")
C_GRID = (0.01, 0.1, 1.0, 10.0)  # logistic regression's inverse regularisation
ALPHA_GRID = tuple(np.logspace(-3, 5, 9).tolist())  # ridge strengths
K_GRID = (3, 10, 30, 100)  # neighbours (those above the smallest inner training part are left out)
INNER_FOLDS = 3
N_JOBS = -1  # the inner searches use every core (joblib)
LOG_FLOOR = 1e-6  # probabilities below it count as it in the decoding (a kNN gives zeros)


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


def ordered_phases(names) -> list[str]:
    """Distinct phase names, known ones in developmental order, then unknown ones sorted; '' dropped."""
    present = {str(n) for n in names} - {""}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def elapsed(traj: dict) -> tuple[np.ndarray, str]:
    """Time since the trajectory's first frame: in hours when every frame has one, else in frames."""
    if has_times(traj):
        return traj["hours"] - traj["hours"][0], "hours"
    frames = traj["frame_indices"] if len(traj["frame_indices"]) == len(traj["z"]) else np.arange(len(traj["z"]))
    return (frames - frames[0]).astype(np.float64), "frames"


def has_times(traj: dict) -> bool:
    """Every frame of the trajectory has a time in hours."""
    return bool(len(traj["hours"])) and bool(np.isfinite(traj["hours"]).all())


def pixel_widths(latent_width: int, n_pixels: int) -> list[int]:
    """The pixel control's PCA widths to choose from: a quarter of the latent width to four times it, at most the
    pixels' own width."""
    widths = {w for w in (latent_width // 4, latent_width // 2, latent_width, 2 * latent_width, 4 * latent_width)
              if 2 <= w <= n_pixels}
    return sorted(widths) or [min(latent_width, n_pixels)]


@dataclass
class ProbeData:
    """What a probe reads: per sample (a frame, or a recording's time-mean) its features, target and groups."""

    features: dict  # feature set -> (N, d) array, or a string saying why it is missing
    y: np.ndarray  # (N,) targets
    groups: np.ndarray  # (N,) the folds' groups (embryo or patient)
    embryo: np.ndarray  # (N,) the trajectory of each sample; its frames in time order
    hours: np.ndarray  # (N,) each sample's time in hours (NaN: none)
    frame: np.ndarray  # (N,) each sample's frame index


def _search(task: str, readout: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, widths: list[int] | None,
            seed: int):
    """The readout fitted on (x, y) with its free choices (and, with widths, a PCA width first) made by grouped
    inner folds; returns (the fitted pipeline, the choices)."""
    linear = readout == "linear"
    estimator = {("classification", True): LogisticRegression(solver="newton-cg", max_iter=1000),
                 ("regression", True): Ridge(),
                 ("classification", False): KNeighborsClassifier(),
                 ("regression", False): KNeighborsRegressor()}[task, linear]
    pipe = Pipeline([("pca", PCA(random_state=seed) if widths else "passthrough"), ("scale", StandardScaler()),
                     ("est", estimator)])
    n_inner = min(INNER_FOLDS, len(np.unique(groups)))
    splits = list(GroupKFold(n_splits=n_inner).split(x, groups=groups)) if n_inner >= 2 else [(np.arange(len(y)),) * 2]
    smallest = min(len(train) for train, _ in splits)
    grid = {"est__C": list(C_GRID)} if linear and task == "classification" else \
        {"est__alpha": list(ALPHA_GRID)} if linear else {"est__n_neighbors": [k for k in K_GRID if k <= smallest]
                                                          or [max(1, smallest)]}
    if widths:
        grid["pca__n_components"] = [w for w in widths if w <= min(smallest, x.shape[1])] or \
            [max(1, min(smallest, x.shape[1]))]
    if n_inner < 2:  # one group: nothing to choose by; the middle of each grid
        pipe.set_params(**{k: v[len(v) // 2] for k, v in grid.items()})
        return pipe.fit(x, y), {k.split("__")[1]: v[len(v) // 2] for k, v in grid.items()}
    search = GridSearchCV(pipe, grid, cv=splits, scoring="balanced_accuracy" if task == "classification" else "r2",
                          n_jobs=N_JOBS, error_score=np.nan).fit(x, y)
    return search.best_estimator_, {k.split("__")[1]: v for k, v in search.best_params_.items()}


def _fit_subsample(train: np.ndarray, max_fit: int, seed: int) -> np.ndarray:
    """At most max_fit of the training rows (a seeded sample, in order): what a probe fits on."""
    if len(train) <= max_fit:
        return train
    return np.sort(np.random.default_rng(seed).choice(train, max_fit, replace=False))


def out_of_fold(data: ProbeData, x, task: str, readout: str, n_classes: int, folds: list, max_fit: int,
                widths: list[int] | None, seed: int) -> tuple[np.ndarray, list[dict]]:
    """Out-of-fold predictions of one feature set x (None: the baseline) and the choices of each fold:
    classification: probabilities (N, n_classes); regression: values (N,)."""
    y = data.y
    pred = np.zeros((len(y), n_classes)) if task == "classification" else np.zeros(len(y))
    chosen = []
    for k, (train, test) in enumerate(folds):
        fit = _fit_subsample(train, max_fit, seed + k)
        if x is None or (task == "classification" and len(np.unique(y[fit])) == 1):
            counts = np.bincount(y[fit], minlength=n_classes) if task == "classification" else None
            pred[test] = counts / counts.sum() if task == "classification" else y[fit].mean()
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs/newton notes and absent classes on tiny inner folds
            model, choice = _search(task, readout, x[fit], y[fit], data.groups[fit], widths, seed)
            if task == "classification":
                pred[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
            else:
                pred[test] = model.predict(x[test])
        chosen.append(choice)
    return pred, chosen


def monotone_decode(probs: np.ndarray) -> np.ndarray:
    """The most likely non-decreasing class sequence (classes in their order; any may be skipped) of a time-ordered
    sequence of class probabilities (T, K): dynamic programming over log probabilities (MTDL-DP, Liu et al. 2019)."""
    log_p = np.log(np.maximum(probs, LOG_FLOOR))  # (T, K)
    classes = np.arange(probs.shape[1])
    score, back = log_p[0].copy(), np.zeros(probs.shape, dtype=np.int64)
    for t in range(1, len(probs)):
        best_before = np.maximum.accumulate(score)  # the best path ending at or below each class
        back[t] = np.maximum.accumulate(np.where(score == best_before, classes, 0))  # ... and where it ends
        score = best_before + log_p[t]
    path = np.zeros(len(probs), dtype=np.int64)
    path[-1] = int(np.argmax(score))
    for t in range(len(probs) - 1, 0, -1):
        path[t - 1] = back[t][path[t]]
    return path


def decode_embryos(probs: np.ndarray, embryo: np.ndarray) -> np.ndarray:
    """monotone_decode of each embryo's frames (rows in time order within an embryo)."""
    decoded = np.zeros(len(probs), dtype=np.int64)
    for name in np.unique(embryo):
        rows = np.flatnonzero(embryo == name)
        decoded[rows] = monotone_decode(probs[rows])
    return decoded


def phase_scores(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy, accuracy within one phase (ordinal distance <= 1 in the class order) and the
    confusion matrix of class predictions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return {"balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                "accuracy": float(accuracy_score(y, pred)),
                "within_one": float(np.mean(np.abs(pred - y) <= 1)),
                "confusion_matrix": confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()}


def onsets(sequence: np.ndarray, times: np.ndarray, n_classes: int, reached: bool) -> np.ndarray:
    """Each class's onset time (n_classes,) in a time-ordered sequence: the first frame of the class (reached=False:
    an annotation, NaN where absent), or the first frame at or past it (reached=True: a monotone prediction; a class
    never reached gets the last frame's time, the earliest it could start)."""
    out = np.full(n_classes, np.nan)
    for k in range(n_classes):
        hit = np.flatnonzero(sequence >= k if reached else sequence == k)
        out[k] = times[hit[0]] if len(hit) else (times[-1] if reached else np.nan)
    return out


def event_times(data: ProbeData, decoded: dict[str, np.ndarray], folds: list, classes: list) -> dict:
    """Onsets of every phase per embryo, annotated and predicted: from each decoded sequence, and the median onset of
    the training folds' embryos (what the clock alone tells). Embryos with times are timed in hours, the others in
    frames, reported apart. Returns the mean absolute errors per unit (overall and per event) and the rows of
    morphokinetics.csv."""
    n, table = len(classes), {}  # embryo -> (unit, annotated onsets, {source: predicted onsets})
    for name in np.unique(data.embryo):
        idx = np.flatnonzero(data.embryo == name)
        timed = bool(np.isfinite(data.hours[idx]).all())
        times = data.hours[idx] if timed else data.frame[idx].astype(np.float64)
        table[name] = ("hours" if timed else "frames", onsets(data.y[idx], times, n, reached=False),
                       {source: onsets(seq[idx], times, n, reached=True) for source, seq in decoded.items()})
    fold_of = {e: k for k, (_, test) in enumerate(folds) for e in np.unique(data.embryo[test])}
    rows = []
    for name, (unit, annotated, predicted) in table.items():
        train = [table[e][1] for e, (u, *_) in table.items() if u == unit and fold_of[e] != fold_of[name]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "All-NaN slice": a phase that no training embryo has
            predicted = {**predicted, "median_onset": np.nanmedian(train, axis=0) if train else np.full(n, np.nan)}
        rows += [{"embryo": name, "phase": classes[k], "unit": unit, "annotated_onset": float(annotated[k]),
                  "source": source, "predicted_onset": float(onset[k])}
                 for k in np.flatnonzero(np.isfinite(annotated)) for source, onset in predicted.items()]
    frame = pd.DataFrame(rows, columns=["embryo", "phase", "unit", "annotated_onset", "source", "predicted_onset"])
    frame["absolute_error"] = (frame["predicted_onset"] - frame["annotated_onset"]).abs()
    summary = {}
    for unit, part in frame.groupby("unit"):
        events = [p for p in classes if p in set(part["phase"])]
        summary[unit] = {"n_embryos": int(part["embryo"].nunique()),
                         "mae": part.groupby("source", sort=False)["absolute_error"].mean().to_dict(),
                         "mae_per_event": {p: part[part["phase"] == p].groupby("source", sort=False)
                                           ["absolute_error"].mean().to_dict() for p in events}}
    return {"by_unit": summary, "rows": frame}


def _scores(spec: "ProbeSpec", data: ProbeData, pred: np.ndarray, n_classes: int) -> dict:
    """A feature set's scores: phase_scores (and, for an ordered target, those of its decoded sequences), or
    R^2 and MAE."""
    if spec.task == "regression":
        return {"r2": float(r2_score(data.y, pred)), "mae": float(mean_absolute_error(data.y, pred))}
    scores = phase_scores(data.y, pred.argmax(axis=1), n_classes)
    if spec.ordered:
        scores["decoded"] = phase_scores(data.y, decode_embryos(pred, data.embryo), n_classes)
    return scores


def run_probe(spec: "ProbeSpec", data: ProbeData, n_splits: int = 5, seed: int = 0, max_fit: int = 5000
              ) -> tuple[dict, pd.DataFrame | None]:
    """A probe on every feature set and the baseline, both readouts, out-of-fold over folds grouped by data.groups:
    the scores, the choices each fold made, the margins of the trained latents over the untrained model and the
    pixels (linear readout, headline metric), and for an ordered target the event times. Returns the result and,
    for an ordered target, the rows of morphokinetics.csv (event_times)."""
    n_groups = len(np.unique(data.groups))
    if n_groups < 2:
        raise InputError(f"the {spec.name} probe needs at least two {spec.grouped_by}s")
    folds = list(GroupKFold(n_splits=min(n_splits, n_groups)).split(data.y, groups=data.groups))
    classes = spec.order(data.y) if spec.task == "classification" else None
    if classes is not None:  # targets as class numbers, in the classes' order
        data = replace(data, y=np.array([classes.index(v) for v in data.y.tolist()], dtype=np.int64))
    n_classes = len(classes) if classes is not None else 0
    width = data.features["trained"].shape[1]
    result = {"n_frames": int(len(data.y)), "n_groups": n_groups, "folds": len(folds), "metric": spec.metric,
              "fit_frames_at_most": max_fit, **({"classes": classes} if classes is not None else {})}
    decoded = {}
    for readout in READOUTS:
        result[readout] = {}
        for name in (*FEATURE_SETS, BASELINE):
            x = None if name == BASELINE else data.features.get(name, "not given")
            if isinstance(x, str):
                result[readout][name] = {"missing": x}
                continue
            widths = pixel_widths(width, x.shape[1]) if name == "pixels" else None
            pred, chosen = out_of_fold(data, x, spec.task, readout, n_classes, folds, max_fit, widths, seed)
            result[readout][name] = {**_scores(spec, data, pred, n_classes), "chosen": chosen}
            if spec.ordered and readout == "linear":
                decoded[name] = decode_embryos(pred, data.embryo)
    linear = result["linear"]
    for control in ("untrained", "pixels"):
        result[f"margin_over_{control}"] = (linear["trained"][spec.metric] - linear[control][spec.metric]
                                            if spec.metric in linear[control] else None)
    if not spec.ordered:
        return result, None
    events = event_times(data, decoded, folds, classes)
    result["event_times"] = events["by_unit"]
    return result, events["rows"]


def phase_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's phase name, for the frames annotated with one."""
    phase = traj["phase"] if len(traj["phase"]) else np.full(len(traj["z"]), "")
    return phase, phase != ""


def is_empty_well(traj: dict) -> bool:
    """Labelled 0: an empty well, with no development to time."""
    return str(traj["meta"].get("label")) in ("0", "0.0")


def hours_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Hours since the first frame, for every frame of a well with times that is not labelled empty."""
    values, _ = elapsed(traj)
    return values, np.full(len(values), has_times(traj) and not is_empty_well(traj))


def frames_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frames since the first frame, for every frame of a well not labelled empty (when no well has times)."""
    frames = traj["frame_indices"] if len(traj["frame_indices"]) == len(traj["z"]) else np.arange(len(traj["z"]))
    return (frames - frames[0]).astype(np.float64), np.full(len(frames), not is_empty_well(traj))


def label_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """The recording's label (one value), where known (>= 0)."""
    try:
        label = int(float(traj["meta"].get("label")))
    except (TypeError, ValueError):
        label = -1
    return np.array([label]), np.array([label >= 0])


def count_wells(trajectories: list[dict]) -> dict:
    """How many trajectories the time probes use and leave out, and why."""
    return {"with_times": sum(has_times(t) and not is_empty_well(t) for t in trajectories),
            "without_times_left_out": sum(not has_times(t) and not is_empty_well(t) for t in trajectories),
            "empty_wells_left_out": sum(is_empty_well(t) for t in trajectories)}


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of the latents, reported beside its controls. analyze_latents.py gathers its data, summary.json
    holds its result under `name`, probes.png draws it and demo_report.py prints it: each loops over PROBES."""

    name: str
    target: str  # what it predicts, as summary.json says it
    task: str  # "classification" or "regression"
    metric: str  # the headline score (of the linear readout)
    level: str  # "frame": every frame a sample, folds grouped by embryo; "recording": a trajectory's time-mean,
    # folds grouped by patient
    values: Callable[[dict], tuple[np.ndarray, np.ndarray]]  # trajectory -> (targets, which of them to use)
    unit: str = ""  # the regression target's unit
    applies: Callable[[list[dict]], bool] = lambda trajectories: True  # whether it runs on these trajectories
    order: Callable = lambda y: sorted(set(np.asarray(y).tolist()))  # a classification's targets -> its classes
    ordered: bool = False  # classes in developmental order: decoded monotone, timed (event times)

    @property
    def grouped_by(self) -> str:
        return "embryo" if self.level == "frame" else "patient"


PROBES = (
    ProbeSpec("phase", "developmental phase of each annotated frame", "classification", "balanced_accuracy", "frame",
              phase_target, order=ordered_phases, ordered=True),
    ProbeSpec("hours", "hours since the first frame, wells with times only", "regression", "r2", "frame",
              hours_target, unit="hours", applies=lambda trajectories: any(map(has_times, trajectories))),
    ProbeSpec("frames", "frames since the first frame (no well has times)", "regression", "r2", "frame",
              frames_target, unit="frames", applies=lambda trajectories: not any(map(has_times, trajectories))),
    ProbeSpec("label", "the recording's label (0 empty well, 1 embryo) from the time-mean of its latents",
              "classification", "balanced_accuracy", "recording", label_target),
)

SPECS = {spec.name: spec for spec in PROBES}


def legacy_phase_probe(phase: dict | None) -> dict | None:
    """The trained latents' linear phase probe in the form of the older `probes.phase_probe` summary key."""
    if phase is None:
        return None
    trained = {k: v for k, v in phase["linear"]["trained"].items() if k in ("balanced_accuracy", "accuracy",
                                                                            "confusion_matrix")}
    return {**{k: phase[k] for k in ("n_frames", "n_embryos", "folds", "classes")}, **trained,
            "majority_baseline_accuracy": phase["linear"]["majority"]["accuracy"]}
