"""Supervised numbers of the latent analysis: classifier metrics, and probes beside their controls.

A probe (phase: classification; hours since the first frame: regression) is cross-validated with folds grouped
by embryo on each feature set: the trained latents, the latents of an untrained model of the same config, and
the raw pixels of the same frames, PCA-reduced to the latent width inside the pipeline (fitted on the training
folds only); beside the baseline that predicts the training folds' majority class (or mean). A feature set given
as a string is missing, the string saying why. No torch; analyze_latents.py gathers the features.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cli import InputError
from frames_io import PHASES

FEATURE_SETS = ("trained", "untrained", "pixels")  # the latents, then the controls
BASELINE = "majority"  # the training folds' majority class (phase) or mean (hours)
CONTROLS = (*FEATURE_SETS[1:], BASELINE)
RIDGE_ALPHAS = np.logspace(-3, 5, 17)  # the hours probe's ridge strengths, chosen by grouped inner folds
RIDGE_INNER_FOLDS = 4


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


def _pipeline(estimator, x_train: np.ndarray, width: int | None, seed: int):
    """Standardise, then `estimator`; with `width`, PCA to that many components first (fitted on x_train only)."""
    if width is None:
        return make_pipeline(StandardScaler(), estimator)
    pca = PCA(n_components=min(width, *x_train.shape), random_state=seed)
    return make_pipeline(pca, StandardScaler(), estimator)


def _fit_predict_proba(x_train, y_train, x_test, classes: np.ndarray, seed: int, width: int | None = None):
    """Probabilities (n_test, len(classes)) from a standardised logistic regression; one-class folds predict it."""
    probs = np.zeros((len(x_test), len(classes)))
    present = np.unique(y_train)
    if len(present) == 1:
        probs[:, np.searchsorted(classes, present[0])] = 1.0
        return probs
    model = _pipeline(LogisticRegression(max_iter=2000, random_state=seed), x_train, width, seed).fit(x_train, y_train)
    probs[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(x_test)
    return probs


def ordered_phases(names) -> list[str]:
    """Distinct phase names, known ones in developmental order, then unknown ones sorted; '' dropped."""
    present = {str(n) for n in names} - {""}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def probe_rows(masks: list[np.ndarray], max_frames: int, seed: int) -> list[np.ndarray]:
    """Per trajectory, the rows a probe uses: those its mask marks, at most max_frames in all (seeded sample)."""
    rows = [np.flatnonzero(mask) for mask in masks]
    owner = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    if len(owner) > max_frames:
        keep = np.sort(np.random.default_rng(seed).choice(len(owner), max_frames, replace=False))
        flat, owner = np.concatenate(rows)[keep], owner[keep]
        rows = [flat[owner == k] for k in range(len(rows))]
    return rows


def elapsed(traj: dict) -> tuple[np.ndarray, str]:
    """Time since the trajectory's first frame: in hours when every frame has one, else in frames."""
    if len(traj["hours"]) and np.isfinite(traj["hours"]).all():
        return traj["hours"] - traj["hours"][0], "hours"
    frames = traj["frame_indices"] if len(traj["frame_indices"]) == len(traj["z"]) else np.arange(len(traj["z"]))
    return (frames - frames[0]).astype(np.float64), "frames"


def _grouped_folds(groups: np.ndarray, n_splits: int, what: str) -> list:
    """(train, test) index pairs of GroupKFold, as many folds as asked and groups allow (at least two groups)."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"the {what} probe needs at least two embryos")
    return list(GroupKFold(n_splits=min(n_splits, n_groups)).split(groups, groups=groups))


def _probe(features: dict, y: np.ndarray, groups: np.ndarray, folds: list, fit_predict, baseline, score,
           metric: str) -> dict:
    """Out-of-fold predictions of every feature set and the baseline, scored; margin of trained over pixels.

    fit_predict(x_train, y_train, x_test, width, groups_train) and baseline(y_train, n_test) return predictions;
    score(y, pred) returns a dict holding `metric`, the headline. Pixels are PCA-reduced to the latents' width.
    """
    width = features["trained"].shape[1]
    result = {"n_frames": int(len(y)), "n_groups": int(len(np.unique(groups))), "folds": len(folds),
              "metric": metric}
    predictors = {name: features.get(name, "not given") for name in FEATURE_SETS}
    predictors[BASELINE] = None
    for name, x in predictors.items():
        if isinstance(x, str):
            result[name] = {"missing": x}
            continue
        pred = np.zeros(len(y), dtype=y.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes on tiny folds
            for train, test in folds:
                pred[test] = (baseline(y[train], len(test)) if x is None else
                              fit_predict(x[train], y[train], x[test], width if name == "pixels" else None,
                                          groups[train]))
        result[name] = score(y, pred)
        if name == "pixels":
            result[name]["pca_components"] = int(min(width, x.shape[1]))
    result["margin_over_pixels"] = (result["trained"][metric] - result["pixels"][metric]
                                    if metric in result["pixels"] else None)
    return result


def classification_probe(features: dict, y: np.ndarray, groups: np.ndarray, classes: list, n_splits: int = 5,
                         seed: int = 0) -> dict:
    """Logistic regression features (N, d) -> the class of each item (its name in `classes`, in their order) for
    every feature set, folds grouped by `groups`; balanced accuracy (the headline), accuracy and confusion matrix."""
    classes = np.array(classes)
    index = {value: i for i, value in enumerate(classes.tolist())}
    y = np.array([index[v] for v in np.asarray(y).tolist()], dtype=np.int64)
    labels = list(range(len(classes)))

    def fit_predict(x_train, y_train, x_test, width, groups_train):
        return _fit_predict_proba(x_train, y_train, x_test, np.arange(len(classes)), seed, width).argmax(1)

    def score(y_true, pred):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            return {"balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
                    "accuracy": float(accuracy_score(y_true, pred)),
                    "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist()}

    result = _probe(features, y, groups, _grouped_folds(groups, n_splits, "classification"), fit_predict,
                    lambda y_train, n: np.full(n, np.bincount(y_train, minlength=len(classes)).argmax()), score,
                    "balanced_accuracy")
    return {"classes": classes.tolist(), **result}


def phase_probe(features: dict, phases: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0) -> dict:
    """classification_probe of each frame's developmental phase, the phases in developmental order."""
    phases = np.asarray(phases).astype(str)
    return classification_probe(features, phases, groups, ordered_phases(phases), n_splits, seed)


def label_probe(features: dict, labels: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0) -> dict:
    """classification_probe of each recording's label (0 empty well, 1 embryo, ...)."""
    return classification_probe(features, labels, groups, sorted(set(np.asarray(labels).tolist())), n_splits, seed)


def hours_probe(features: dict, hours: np.ndarray, groups: np.ndarray, n_splits: int = 5, seed: int = 0) -> dict:
    """Ridge regression features (N, d) -> time since the first frame for every feature set, folds grouped by
    embryo; R^2 (the headline) and mean absolute error (in the target's unit). The ridge strength is chosen
    inside the training folds by folds grouped by embryo too: frames of one embryo are alike, and choosing it by
    leaving out single frames under-regularises the feature sets that vary most between embryos (the pixels)."""
    y = np.asarray(hours, dtype=np.float64)

    def fit_predict(x_train, y_train, x_test, width, groups_train):
        inner = min(RIDGE_INNER_FOLDS, len(np.unique(groups_train)))
        splits = list(GroupKFold(n_splits=inner).split(x_train, groups=groups_train)) if inner >= 2 else None
        model = _pipeline(RidgeCV(alphas=RIDGE_ALPHAS, cv=splits), x_train, width, seed)
        return model.fit(x_train, y_train).predict(x_test)

    def score(y_true, pred):
        return {"r2": float(r2_score(y_true, pred)), "mae": float(mean_absolute_error(y_true, pred))}

    return _probe(features, y, groups, _grouped_folds(groups, n_splits, "hours"), fit_predict,
                  lambda y_train, n: np.full(n, y_train.mean()), score, "r2")


def legacy_phase_probe(phase: dict | None) -> dict | None:
    """The trained latents' phase probe in the form of the older `probes.phase_probe` summary key."""
    if phase is None:
        return None
    return {**{k: phase[k] for k in ("n_frames", "n_embryos", "folds", "classes")}, **phase["trained"],
            "majority_baseline_accuracy": phase["majority"]["accuracy"]}


def phase_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's phase name, for the frames annotated with one."""
    phase = traj["phase"] if len(traj["phase"]) else np.full(len(traj["z"]), "")
    return phase, phase != ""


def is_empty_well(traj: dict) -> bool:
    """Labelled 0: an empty well, with no development to time."""
    return str(traj["meta"].get("label")) in ("0", "0.0")


def hours_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Time since the first frame (elapsed), for every frame of a well not labelled empty."""
    values, _ = elapsed(traj)
    return values, np.full(len(values), not is_empty_well(traj))


def hours_unit(trajectories: list[dict]) -> str:
    """The unit(s) of the hours probe's target over these trajectories."""
    return " and ".join(sorted({elapsed(t)[1] for t in trajectories}))


def label_target(traj: dict) -> tuple[np.ndarray, np.ndarray]:
    """The recording's label (one value), where known (>= 0)."""
    try:
        label = int(float(traj["meta"].get("label")))
    except (TypeError, ValueError):
        label = -1
    return np.array([label]), np.array([label >= 0])


@dataclass(frozen=True)
class ProbeSpec:
    """One probe of the latents, reported beside its controls. analyze_latents.py gathers its data, summary.json
    holds its result under `name`, probes.png draws it and demo_report.py prints it: each loops over PROBES."""

    name: str
    target: str  # what it predicts, as summary.json says it
    metric: str  # the headline score, a key of each feature set's result
    level: str  # "frame": every frame one sample, folds grouped by embryo; "embryo": each trajectory's time-mean,
    # folds grouped by patient
    values: Callable[[dict], tuple[np.ndarray, np.ndarray]]  # trajectory -> (targets, which of them to use)
    run: Callable[..., dict]  # (features, y, groups, n_splits, seed) -> the result
    unit: Callable[[list[dict]], str] | None = None  # the trajectories used -> the target's unit


PROBES = (
    ProbeSpec("phase", "developmental phase of each annotated frame", "balanced_accuracy", "frame", phase_target,
              phase_probe),
    ProbeSpec("hours", "time since the trajectory's first frame", "r2", "frame", hours_target, hours_probe,
              hours_unit),
    ProbeSpec("label", "the recording's label (0 empty well, 1 embryo) from the time-mean of its latents",
              "balanced_accuracy", "embryo", label_target, label_probe),
)
