"""The figures: training curves (train.py) and the latent analysis (matplotlib, sklearn's displays), whose numbers
analyze_latents.py computes.

Every function takes plain arrays, tables and dicts and writes one PNG. No torch, and nothing imported from
analyze_latents.py (which imports this module).
"""

import io
import math
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cli import LOSS_PARTS, write_bytes  # noqa: E402
from frames_io import PHASES  # noqa: E402

LABEL_COLORS = {0: "tab:orange", 1: "tab:blue"}  # empty well, embryo; unknown labels are grey


def _save(fig, path: Path) -> None:
    """Write the figure as PNG atomically (a reader never sees half a file), then free it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def time_axis(traj: dict) -> tuple[np.ndarray, str]:
    """Hours when every frame has one, else frame index."""
    if len(traj["hours"]) and np.isfinite(traj["hours"]).all():
        return traj["hours"], "hours"
    return traj["frame_indices"].astype(np.float64), "frame index"


def phase_palette(order: list[str]) -> dict:
    """One colour per phase name (given in developmental order), the same in every figure, running along the
    turbo colour map; '' (no phase) is light grey."""
    cmap = plt.get_cmap("turbo")
    return {"": (0.8, 0.8, 0.8, 1.0), **{p: cmap(0.05 + 0.9 * i / max(len(order) - 1, 1)) for i, p in enumerate(order)}}


def _phase_legend(ax, palette: dict, present) -> None:
    present = set(present)
    for phase, color in palette.items():
        if phase in present:
            ax.scatter([], [], color=color, label=phase or "(none)")
    ax.legend(loc="best", fontsize=6, ncol=2)


def _has_phase(traj: dict) -> bool:
    return bool(len(traj["phase"])) and bool((traj["phase"] != "").any())


def plot_tphate(traj: dict, embedding: np.ndarray, method: str, palette: dict, path: Path) -> None:
    """One trajectory's 2-D embedding coloured by time, and by phase when annotated."""
    has_phase = _has_phase(traj)
    fig, axes = plt.subplots(1, 2 if has_phase else 1, figsize=(11 if has_phase else 5.5, 4.5), squeeze=False)
    time, time_label = time_axis(traj)
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
    _save(fig, path)


def _label_color(label) -> str:
    try:
        value = float(label)
    except (TypeError, ValueError):
        return "0.5"
    return LABEL_COLORS.get(int(value), "0.5") if math.isfinite(value) else "0.5"


def plot_population(trajectories: list[dict], planes: list[np.ndarray], ratio: list[float], palette: dict,
                    path: Path) -> None:
    """All trajectories in one shared plane (each (n, 2)): lines by time, points by phase or label."""
    has_phase = any(_has_phase(t) for t in trajectories)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    points = None
    for traj, xy in zip(trajectories, planes, strict=True):
        axes[0].plot(xy[:, 0], xy[:, 1], color="0.85", lw=0.5, zorder=1)
        points = axes[0].scatter(xy[:, 0], xy[:, 1], c=np.linspace(0, 1, len(xy)), cmap="viridis", s=3, zorder=2)
        if has_phase:
            axes[1].scatter(xy[:, 0], xy[:, 1], c=[palette[p] for p in traj["phase"]], s=3)
        else:
            axes[1].plot(xy[:, 0], xy[:, 1], lw=0.8, color=_label_color(traj["meta"].get("label")))
    if points is not None:
        fig.colorbar(points, ax=axes[0], label="fraction of recording")
    if has_phase:
        _phase_legend(axes[1], palette, np.concatenate([t["phase"] for t in trajectories]))
        axes[1].set_title("coloured by developmental phase")
    else:
        for label, color in (("0 (empty well)", LABEL_COLORS[0]), ("1 (embryo)", LABEL_COLORS[1]), ("unknown", "0.5")):
            axes[1].plot([], [], color=color, label=label)
        axes[1].legend(fontsize=7)
        axes[1].set_title("coloured by label")
    axes[0].set_title(f"{len(trajectories)} trajectories, shared PCA plane, by time")
    for ax in axes:
        ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f}% var)")
        ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f}% var)" if len(ratio) > 1 else "")
    _save(fig, path)


def plot_speed_curves(trajectories: list[dict], speeds: list[np.ndarray], outlier_names: set, path: Path) -> None:
    """Speed ||z(t+1) - z(t)|| over time for every embryo; outliers in red, the median curve in black."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x_label = "frame index"
    for traj, speed in zip(trajectories, speeds, strict=True):
        time, x_label = time_axis(traj)
        outlier = traj["name"] in outlier_names
        ax.plot(time[1:], speed, color="tab:red" if outlier else "0.6", lw=1.2 if outlier else 0.6,
                alpha=1.0 if outlier else 0.5, zorder=3 if outlier else 1)
    same_length = len({len(s) for s in speeds}) == 1
    if same_length and speeds and len(speeds[0]):
        time, _ = time_axis(trajectories[0])
        ax.plot(time[1:], np.median(np.stack(speeds), axis=0), color="k", lw=2, label="median", zorder=4)
    ax.plot([], [], color="tab:red", label="outlier")
    ax.set_xlabel(x_label)
    ax.set_ylabel("latent speed ||z(t+1) - z(t)||")
    ax.set_title("latent speed per embryo")
    ax.legend()
    _save(fig, path)


def plot_outliers(table: pd.DataFrame, threshold: float, columns, path: Path) -> None:
    """Trajectory length vs start-end distance, and each embryo's largest |robust z| over `columns`."""
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
    axes[1].set_title("over " + ", ".join(columns).replace("_", " "), fontsize=8)
    axes[1].legend()
    _save(fig, path)


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
        for curve in betti[:, dim]:
            axes[2].plot(radii, curve, color=color, alpha=0.15, lw=0.6)
        axes[2].plot(radii, betti[:, dim].mean(axis=0), color=color, lw=2, label=f"mean Betti-{dim}")
    axes[0].set_title(f"{names[example]} (largest H1 persistence)")
    axes[0].legend()
    for dgms in diagrams:
        if len(dgms[1]):
            axes[1].scatter(dgms[1][:, 0], dgms[1][:, 1], s=6, color="tab:orange", alpha=0.4)
    axes[1].set_title("H1 bars of all embryos")
    axes[2].set_yscale("symlog")
    axes[2].set_xlabel("radius")
    axes[2].set_ylabel("Betti number")
    axes[2].legend()
    axes[2].set_title("Betti curves")
    _save(fig, path)


def write_reconstruction_strip(frames: np.ndarray, reconstruction: np.ndarray, path: Path) -> np.ndarray:
    """PNG of a clip's frames (T, H, W) in [0, 1] (top row) above their reconstruction (bottom row); returns the
    uint8 image (2H, T*W)."""
    rows = [np.concatenate(list(video), axis=1) for video in (frames, reconstruction)]  # each (H, T*W)
    image = np.round(np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    write_bytes(path, cv2.imencode(".png", image)[1].tobytes())  # 8-bit gray, as the frames
    return image


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter in log_dir/tensorboard when the optional tensorboard package is installed, else None
    (torch's TensorBoard module is imported here, when training calls it, never at import)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))


def curve_titles(history: list[dict]) -> dict[str, str]:
    """The panels of the training curves, {log key: title}: the total, then each loss part (cli.LOSS_PARTS) that is
    ever positive in training or validation."""
    def positive(key):
        return any(e.get(k) is not None and e[k] > 0 for e in history for k in (key, "val_" + key))

    return {"total": "total", **{p.name: p.title or p.name for p in LOSS_PARTS if positive(p.name)}}


def log_to_tensorboard(writer, entry: dict, image: np.ndarray, epoch: int) -> None:
    """An epoch's log entry (its float values) and reconstruction image to a SummaryWriter (None: nothing)."""
    if writer is None:
        return
    for key, value in entry.items():
        if isinstance(value, float):
            writer.add_scalar(key, value, epoch)
    writer.add_image("reconstruction (input above)", image[None], epoch)
    writer.flush()


def plot_training_curves(history: list[dict], path: Path) -> None:
    """Per-epoch train and validation losses (log scale) from training_log.json entries: one panel per
    curve_titles."""
    epochs = [e["epoch"] for e in history]

    def series(key):
        return [e[key] if e.get(key) is not None and e[key] > 0 else np.nan for e in history]

    titles = curve_titles(history)
    fig, axes = plt.subplots(1, len(titles), figsize=(3.2 * len(titles), 3), squeeze=False)
    for ax, (part, title) in zip(axes[0], titles.items(), strict=True):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            ax.plot(epochs, series(prefix + part), style, markersize=3, label="val" if prefix else "train")
        ax.set(title=title, xlabel="epoch")
        if np.isfinite(series(part) + series("val_" + part)).any():
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_classifier(metrics: dict, title: str, roc_path: Path, cm_path: Path) -> list[str]:
    """ROC curve (binary) and confusion matrix figures from classification metrics; returns the files written."""
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # here: training imports this module too
    written = []
    if metrics["roc_curve"] is not None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        RocCurveDisplay(fpr=np.asarray(metrics["roc_curve"]["fpr"]), tpr=np.asarray(metrics["roc_curve"]["tpr"]),
                        roc_auc=metrics["roc_auc"]).plot(ax=ax, plot_chance_level=True)
        ax.set_title(title, fontsize=9)
        _save(fig, roc_path)
        written.append(roc_path.name)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(np.asarray(metrics["confusion_matrix"])).plot(ax=ax, cmap="Blues", colorbar=True)
    ax.set_title(f"confusion matrix (accuracy {metrics['accuracy']:.3f})", fontsize=9)
    _save(fig, cm_path)
    written.append(cm_path.name)
    return written


PROBE_FEATURES = ("trained", "untrained", "pixels", "majority")  # as in summary.json's probes
PROBE_BARS = {("linear", ""): "tab:blue", ("knn", ""): "tab:orange", ("linear", "decoded"): "tab:green"}


def plot_probes(probes: dict, path: Path) -> None:
    """Each probe's headline metric for the trained latents beside its controls, for both readouts (and the phases
    decoded monotone); missing ones marked."""
    present = {name: probe for name, probe in probes.items() if probe is not None}
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(5 * max(len(present), 1), 4), squeeze=False)
    x = np.arange(len(PROBE_FEATURES))
    for ax, (name, probe) in zip(axes[0], present.items(), strict=False):
        metric = probe["metric"]
        bars = [(readout, part) for readout, part in PROBE_BARS if not part or "decoded" in probe[readout]["trained"]]
        width = 0.8 / len(bars)
        for i, (readout, part) in enumerate(bars):
            results = [probe[readout][f] for f in PROBE_FEATURES]
            values = [(r.get(part, {}) if part else r).get(metric, np.nan) for r in results]
            drawn = ax.bar(x + (i - (len(bars) - 1) / 2) * width, np.nan_to_num(values), width,
                           color=PROBE_BARS[readout, part], label=f"{readout}{', ' + part if part else ''}")
            ax.bar_label(drawn, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in values], fontsize=6)
        ax.set_xticks(x, PROBE_FEATURES)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylabel({"r2": "$R^2$"}.get(metric, metric.replace("_", " ")))
        margins = [f"{c} {'n/a' if probe[f'margin_over_{c}'] is None else format(probe[f'margin_over_{c}'], '+.3f')}"
                   for c in ("untrained", "pixels")]
        ax.set_title(f"{name} probe ({probe['n_embryos']} embryos, folds by {probe['grouped_by']})\n"
                     f"linear, trained over: {', '.join(margins)}", fontsize=9)
        ax.legend(fontsize=7)
    if not present:
        axes[0, 0].text(0.5, 0.5, "no probe: no phases and fewer than two trajectories", ha="center")
    _save(fig, path)


EVENT_PANELS = ("trained", "untrained", "pixels", "median_onset")  # sources drawn in morphokinetics.png


def plot_event_times(events: pd.DataFrame, path: Path) -> None:
    """Predicted against annotated onset of every phase of every embryo (morphokinetics.csv), one panel per source:
    the trained latents' decoded phases beside the controls' and the training embryos' median onset; in hours where
    the recordings have times, else in frames."""
    unit = "hours" if (events["unit"] == "hours").any() else "frames"
    events = events[events["unit"] == unit]
    sources = [s for s in EVENT_PANELS if (events["source"] == s).any()]
    order = sorted(set(events["phase"]), key=lambda p: (PHASES.index(p) if p in PHASES else len(PHASES), p))
    palette = phase_palette(order)
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(4.2 * max(len(sources), 1), 4.2), squeeze=False)
    low, high = events[["annotated_onset", "predicted_onset"]].min().min(), events[["annotated_onset",
                                                                                   "predicted_onset"]].max().max()
    for ax, source in zip(axes[0], sources, strict=False):
        part = events[events["source"] == source]
        ax.plot([low, high], [low, high], color="0.6", lw=0.8)
        ax.scatter(part["annotated_onset"], part["predicted_onset"], s=8, c=[palette[p] for p in part["phase"]])
        mae = (part["predicted_onset"] - part["annotated_onset"]).abs().mean()
        ax.set(title=f"{source.replace('_', ' ')}: MAE {mae:.1f} {unit}", xlabel=f"annotated onset ({unit})",
               ylabel=f"predicted onset ({unit})")
    if sources:
        _phase_legend(axes[0, 0], palette, order)
    _save(fig, path)
