"""Print where `make demo` put its outputs and the headline numbers that show the model learned.

The first numbers are the trained latents' margins over an untrained model of the same configuration (the honest
control) and over raw pixels; then every probe (summary.json's `probes`, in the analysis's order) beside its
controls: its scores, the phases decoded monotone, and the event times. A missing, truncated or partial output is
one line naming it and the step to run again (exit 2).
"""

import argparse
import json
import sys
from pathlib import Path

from cli import RECON_PNG, TRAINING_LOG, InputError, OneLineParser, run_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="demo_report.py", description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", type=str, default="demo_output",
                        help="folder holding data/, checkpoints/, logs/, latents/, analysis/ (default: %(default)s)")
    return parser


FEATURE_SETS = ("trained", "untrained", "pixels", "majority")  # as in summary.json's `probes`
CONTROLS = ("untrained", "pixels")  # the margins: trained minus each, the honest one (an untrained model) first


def _metric_name(metric: str) -> str:
    return {"r2": "R^2", "balanced_accuracy": "balanced accuracy", "within_one": "within one phase"}.get(metric, metric)


def _score(probe: dict, metric: str, part: str = "") -> dict[str, float | None]:
    """The linear readout's `metric` for each feature set (part: "decoded"), None where missing."""
    results = {name: probe["linear"][name] for name in FEATURE_SETS}
    return {name: (r.get(part, {}) if part else r).get(metric) for name, r in results.items()}


def _margins(probes: dict) -> str:
    """Trained minus the untrained model and minus raw pixels for every probe's headline metric (the decoded
    phases where a probe decodes them): the first headline numbers."""
    parts = []
    for name, probe in probes.items():
        if probe is None:
            continue
        part = "decoded" if "decoded" in probe["linear"]["trained"] else ""
        values = _score(probe, probe["metric"], part)
        margins = [f"{values['trained'] - values[c]:+.3f} over {c}" if values[c] is not None else f"{c} missing"
                   for c in CONTROLS]
        parts.append(f"{name}{' (decoded)' if part else ''} {_metric_name(probe['metric'])} " + ", ".join(margins))
    return "; ".join(parts) or "no probe could run (no phases, fewer than two recordings)"


def _values(values: dict, digits: int = 3, unit: str = "") -> str:
    return ", ".join(f"{name} {'missing' if v is None else f'{v:.{digits}f}{unit}'}" for name, v in values.items())


def _probe_lines(name: str, probe: dict | None) -> list[str]:
    """A probe's lines: its headline metric for the trained latents and each control (the linear readout; with the
    MAE of a regression), and for a decoded one also the decoded scores and the event times' MAE."""
    if probe is None:
        return [f"  {name:20s} not run (its target is missing, or fewer than two groups have it)"]
    where = f"({probe['n_embryos']} embryos, folds grouped by {probe['grouped_by']})"
    metric = probe["metric"]
    line = f"{_metric_name(metric)}: {_values(_score(probe, metric))}"
    if metric == "r2":
        line += f"; MAE ({probe['unit']}): {_values(_score(probe, 'mae'), 2)}"
    lines = [f"  {name:20s} {line} {where}"]
    if "decoded" in probe["linear"]["trained"]:
        lines.append(f"  {name + ', decoded':20s} {_metric_name(metric)}: {_values(_score(probe, metric, 'decoded'))}; "
                     f"within one phase: {_values(_score(probe, 'within_one', 'decoded'))}")
    for unit, events in probe.get("event_times", {}).items():
        lines.append(f"  {'event times':20s} MAE of the onsets ({unit}): {_values(events['mae'], 1)} "
                     f"({events['n_embryos']} embryos; median_onset: the training embryos' median, the clock alone)")
    return lines


def headline(demo_dir: Path) -> list[str]:
    """The lines of the report (read_outputs: an InputError when a step's output is missing or unreadable)."""
    history, summary = read_outputs(demo_dir)
    cls, probes = summary["classification"], summary["probes"]
    lines = [
        "Outputs",
        f"  data            {demo_dir / 'data' / 'index.csv'} (+ annotations/)",
        f"  checkpoints     {demo_dir / 'checkpoints'} (best.pt, last.pt, checkpoint_epoch_<N>.pt)",
        f"  training log    {demo_dir / 'logs' / TRAINING_LOG}",
        f"  reconstructions {demo_dir / 'logs' / RECON_PNG.format(epoch='<N>')} (inputs above reconstructions)",
        f"  latents         {demo_dir / 'latents'} (trajectories/, clips/)",
        f"  analysis        {demo_dir / 'analysis'} (summary.json, {len(summary['figures'])} figures)",
        "Headline numbers",
        f"  margins              {_margins(probes)} (the trained latents minus the same probe on an untrained "
        "model of the same configuration, and on the raw pixels)",
        *(line for name, probe in probes.items() for line in _probe_lines(name, probe)),
        _loss_line(history),
    ]
    if cls is not None:
        lines.append(_classifier_line(cls))
    return lines


def _loss_line(history: list[dict]) -> str:
    """MS-SSIM of the first and last epoch and the loss's first and best value: validation's, or training's for a
    run without validation (--val_fraction 0)."""
    first, last = history[0], history[-1]
    prefix = "val_" if first.get("val_total") is not None else ""
    best = min(history, key=lambda e: e[f"{prefix}total"])
    name = "validation" if prefix else "training (no validation split)"
    return (f"  {name.split()[0] + ' MS-SSIM':20s} epoch {first['epoch']}: {1 - first[prefix + 'ms_ssim']:.3f}   "
            f"epoch {last['epoch']}: {1 - last[prefix + 'ms_ssim']:.3f}   ({name} loss {first[prefix + 'total']:.3f} "
            f"-> {best[prefix + 'total']:.3f}, best at epoch {best['epoch']})")


def _classifier_line(cls: dict) -> str:
    """The model classifier's ROC AUC on all wells and on the run's validation wells (undefined with one class)."""
    val_auc = cls.get("by_split", {}).get("val", {}).get("roc_auc")
    auc = "undefined (one class among the labelled wells)" if cls["roc_auc"] is None else f"{cls['roc_auc']:.3f}"
    return (f"  empty vs embryo      ROC AUC {auc} on all wells"
            + (f", {val_auc:.3f} on validation wells" if val_auc is not None else "")
            + f" ({cls['source'].split(' (')[0]})")


def read_outputs(demo_dir: Path) -> tuple[list[dict], dict]:
    """The training log (a list of epochs, at least one) and the analysis summary; InputError (one line) naming what
    is missing or unreadable and the step to run again."""
    if not demo_dir.is_dir():
        raise InputError(f"--demo_dir {demo_dir} is not a folder; run `make demo` first, or pass its output folder")
    values = []
    for path, step, kind in ((demo_dir / "logs" / TRAINING_LOG, "train.py", list),
                             (demo_dir / "analysis" / "summary.json", "analyze_latents.py", dict)):
        try:
            value = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path} is missing; run `make demo` first") from None
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise InputError(f"{path} cannot be read ({type(err).__name__}); run {step} again (`make demo`)") from None
        if not isinstance(value, kind) or not value:
            what = "epoch" if kind is list else "results"
            raise InputError(f"{path} holds no {what}; run {step} again (`make demo`)")
        values.append(value)
    history, summary = values
    if not all(isinstance(e, dict) and "epoch" in e for e in history):
        raise InputError(f"{demo_dir / 'logs' / TRAINING_LOG} is not a list of epochs; run train.py again")
    return history, summary


def main(args) -> int:
    try:
        print("\n".join(headline(Path(args.demo_dir))))
    except (KeyError, TypeError, IndexError) as error:  # an entry missing or of another type: an older or foreign file
        raise InputError(f"{args.demo_dir}: the training log or summary.json lacks what the report reads "
                         f"({type(error).__name__}: {error}); run train.py and analyze_latents.py again") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main("demo_report.py", main, get_args_parser().parse_args()))
