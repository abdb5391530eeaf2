"""Supervised numbers of the latent analysis: classifier metrics and probes, cross-validated with grouped folds.

No torch. analyze_latents.py gathers the features and labels and writes what these functions return.
"""

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cli import InputError
from frames_io import PHASES


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
        raise InputError("cross-validation needs at least two patients/groups")
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
        raise InputError("the phase probe needs at least two embryos with phases")
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


