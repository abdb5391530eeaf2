"""Print where `make demo` put its outputs and the headline numbers that show the model learned."""

import argparse
import json
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo_dir", type=str, default="demo_output",
                        help="folder holding data/, checkpoints/, logs/, latents/, analysis/ (default: %(default)s)")
    return parser


def headline(demo_dir: Path) -> list[str]:
    """The lines of the report; raises FileNotFoundError when a step's output is missing."""
    history = json.loads((demo_dir / "logs" / "training_log.json").read_text())
    summary = json.loads((demo_dir / "analysis" / "summary.json").read_text())
    first, last = history[0], history[-1]
    best = min(history, key=lambda e: e["val_total"])
    cls, probe = summary["classification"], summary["phase_probe"]
    val_auc = cls.get("by_split", {}).get("val", {}).get("roc_auc")
    lines = [
        "Outputs",
        f"  data            {demo_dir / 'data' / 'index.csv'} (+ annotations/)",
        f"  checkpoints     {demo_dir / 'checkpoints'} (best.pt, last.pt, checkpoint_epoch_<N>.pt)",
        f"  training log    {demo_dir / 'logs' / 'training_log.json'}",
        f"  reconstructions {demo_dir / 'logs'}/recon_epoch_<N>.png (inputs above reconstructions)",
        f"  latents         {demo_dir / 'latents'} (trajectories/, clips/)",
        f"  analysis        {demo_dir / 'analysis'} (summary.json, {len(summary['figures'])} figures)",
        "Headline numbers",
        f"  validation MS-SSIM   epoch 1: {1 - first['val_ms_ssim']:.3f}   epoch {last['epoch']}: "
        f"{1 - last['val_ms_ssim']:.3f}   (validation loss {first['val_total']:.3f} -> {best['val_total']:.3f}, "
        f"best at epoch {best['epoch']})",
        f"  empty vs embryo      ROC AUC {cls['roc_auc']:.3f} on all wells"
        + (f", {val_auc:.3f} on validation wells" if val_auc is not None else "")
        + f" ({cls['source'].split(' (')[0]})",
        f"  phase probe          accuracy {probe['accuracy']:.3f} vs majority baseline "
        f"{probe['majority_baseline_accuracy']:.3f} ({probe['n_embryos']} embryos, folds grouped by embryo)",
    ]
    return lines


def main(args) -> int:
    try:
        print("\n".join(headline(Path(args.demo_dir))))
    except FileNotFoundError as error:
        print(f"demo_report.py: error: {error.filename} is missing; run `make demo` first", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
