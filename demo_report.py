"""Print where `make demo` put its outputs and the headline numbers that show the model learned.

The first number is the trained latents' margin over raw pixels; every probe (summary.json's `probes`, one line
each, in the analysis's order) stands beside its controls.
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


def _metric_name(metric: str) -> str:
    return {"r2": "R^2"}.get(metric, metric.replace("_", " "))


def _margins(probes: dict) -> str:
    """Trained minus raw pixels for every probe: the first headline number."""
    parts = [f"{name} {_metric_name(probe['metric'])} "
             + ("missing (no pixels in the latents)" if probe["margin_over_pixels"] is None
                else f"{probe['margin_over_pixels']:+.3f}")
             for name, probe in probes.items() if probe is not None]
    return ", ".join(parts) or "no probe could run (no phases, fewer than two recordings)"


def _probe_line(probe: dict | None) -> str:
    """One probe's headline metric for the trained latents and each control (with the MAE where it has one)."""
    if probe is None:
        return "not run (its target is missing, or fewer than two embryos have it)"
    metric = probe["metric"]
    values = []
    for name in FEATURE_SETS:
        result = probe[name]
        if "missing" in result:
            values.append(f"{name} missing")
            continue
        mae = f" (MAE {result['mae']:.2f} {probe.get('unit', '')})" if "mae" in result else ""
        values.append(f"{name} {result[metric]:.3f}{mae}")
    return (f"{_metric_name(metric)}: " + ", ".join(values)
            + f" ({probe['n_embryos']} embryos, folds grouped by {probe['grouped_by']})")


def headline(demo_dir: Path) -> list[str]:
    """The lines of the report; raises FileNotFoundError when a step's output is missing."""
    history = json.loads((demo_dir / "logs" / TRAINING_LOG).read_text())
    summary = json.loads((demo_dir / "analysis" / "summary.json").read_text())
    first, last = history[0], history[-1]
    best = min(history, key=lambda e: e["val_total"])
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
        f"  margin over pixels   {_margins(probes)} (trained latents minus the same probe on raw pixels)",
        *(f"  {name + ' probe':20s} {_probe_line(probe)}" for name, probe in probes.items()),
        f"  validation MS-SSIM   epoch 1: {1 - first['val_ms_ssim']:.3f}   epoch {last['epoch']}: "
        f"{1 - last['val_ms_ssim']:.3f}   (validation loss {first['val_total']:.3f} -> {best['val_total']:.3f}, "
        f"best at epoch {best['epoch']})",
    ]
    if cls is not None:
        val_auc = cls.get("by_split", {}).get("val", {}).get("roc_auc")
        lines.append(f"  empty vs embryo      ROC AUC {cls['roc_auc']:.3f} on all wells"
                     + (f", {val_auc:.3f} on validation wells" if val_auc is not None else "")
                     + f" ({cls['source'].split(' (')[0]})")
    return lines


def main(args) -> int:
    try:
        print("\n".join(headline(Path(args.demo_dir))))
    except FileNotFoundError as error:
        raise InputError(f"{error.filename} is missing; run `make demo` first") from None
    except KeyError as error:
        raise InputError(f"summary.json has no {error}; re-run analyze_latents.py") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main("demo_report.py", main, get_args_parser().parse_args()))
