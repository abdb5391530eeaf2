"""The GPU check: one command showing that training, torchrun and extraction work on a CUDA GPU, and how fast.

    make gpu-check                                  # python3 gpu_check.py --out gpu_check_out (one H200: < 8 min)
    python3 gpu_check.py --dry_run --out /tmp/gc    # the same steps at a toy size on the CPU (what the tests run)

Steps, each a subprocess with its own time limit (a failed step is recorded and the rest still run; the exit
code is 1 if any failed): the device-aware tests (tests/test_device.py) on CUDA; bench.py (full config, bf16)
eager, with the whole step compiled (CUDA graphs), with the compiled gate arithmetic, and eager at a large
batch; a 3-epoch train.py run on synthetic wells under AMP; train.py under torchrun with one process;
extract_latents.py (trajectories) on the GPU; and, in this process, the largest batch whose training step fits
at 128 px (doubling, then bisection, catching torch.cuda.OutOfMemoryError). Writes OUT/gpu_check.json (every
figure) and OUT/gpu_check.log (every step's output); prints a table last: clips/s, share of the measured bf16
matmul peak, peak memory and the projected time of 50 epochs over 13,300 clips.

Needs torch, numpy, pandas, opencv-python-headless, tqdm, pytest and pytorch-msssim; not the analysis packages.
A package missing there is installed from wheels in `.whl/` (see BENCHMARKS.md) into OUT/site, if present.
"""

import argparse
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cli

REPO = Path(__file__).resolve().parent
NEEDED = {"torch": "torch", "numpy": "numpy", "pandas": "pandas", "cv2": "opencv-python-headless", "tqdm": "tqdm",
          "pytest": "pytest", "pytorch_msssim": "pytorch-msssim"}
TARGET_CLIPS, TARGET_EPOCHS, TARGET_MINUTES = 13_300, 50, 30  # the 704-embryo set, 50 epochs, under 30 minutes
# (name, size): the real check on one GPU, and the toy one on the CPU that the tests run
SIZES = {
    "gpu": dict(device="cuda", bench=["--config", "full", "--steps", "5", "--warmup", "2"], big_batch=64,
                data=dict(n_embryos=48, n_frames=30, size=128), image_size=128, seq_len=20, batch_size=16,
                model=[], tests=["-k", "cuda"], search=(8, 4096), budget_s=440, workers=4),
    "dry_run": dict(device="cpu", bench=["--config", "tiny", "--steps", "1", "--warmup", "1", "--threads", "1"],
                    big_batch=4, data=dict(n_embryos=8, n_frames=8, size=32), image_size=32, seq_len=4,
                    batch_size=2, model=["--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim",
                                         "8", "--decoder_layers", "1"],
                    tests=["-k", "cpu and not compiled"], search=(1, 4), budget_s=300, workers=0),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default="gpu_check_out",
                        help="folder for gpu_check.json, gpu_check.log and the runs' files (default: %(default)s)")
    parser.add_argument("--dry_run", action="store_true",
                        help="the same steps at a toy size on the CPU, in about a minute (default: off)")
    parser.add_argument("--compile_modes", type=str, default=None,
                        help="comma-separated --compile modes of the B=8 bench runs, in this order (default: "
                             "off,step,gates; off with --dry_run)")
    return parser


class Check:
    """The steps' records, the log file and the time budget."""

    def __init__(self, out: Path, size: dict, env: dict):
        self.out, self.size, self.env = out, size, env
        self.start = time.perf_counter()
        self.steps: dict[str, dict] = {}
        self.log = open(out / "gpu_check.log", "w")  # noqa: SIM115 (kept open for the whole check)

    def left_s(self) -> float:
        return self.size["budget_s"] - (time.perf_counter() - self.start)

    def run(self, name: str, command: list[str], limit_s: float) -> dict:
        """Run one step (a subprocess) within min(limit_s, the budget left); record and log it."""
        limit = max(1.0, min(limit_s, self.left_s()))
        tick = time.perf_counter()
        self.log.write(f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)\n")
        self.log.flush()
        try:
            done = subprocess.run(command, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                  timeout=limit)
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        record = {"ok": code == 0, "returncode": code, "seconds": round(time.perf_counter() - tick, 1),
                  "command": " ".join(command)}
        self.steps[name] = record
        print(f"{name:24s} {'ok' if record['ok'] else 'FAILED (' + str(code) + ')':>14s} {record['seconds']:7.1f} s",
              flush=True)
        return record


def prepare_packages(out: Path) -> tuple[dict, list[str]]:
    """Environment for the subprocesses; packages missing from this Python are installed from .whl/ if present."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if missing and wheels:
        site = out / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, wheels)], check=False)
        sys.path.insert(0, str(site))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        importlib.invalidate_caches()
        missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    return env, missing


def bench_runs(check: Check, modes: list[str]):
    """bench.py in bf16: each --compile mode at the preset's batch (the whole-step compile, minutes of compiling,
    within at most 200 s), then eager at a large batch."""
    size = check.size
    common = [sys.executable, "bench.py", "--device", size["device"], "--amp", "bf16", "--skip_loader",
              "--use_classifier", *size["bench"]]
    runs = [(f"bench_{mode}", ["--compile", mode], 200 if mode == "step" else 120) for mode in modes]
    runs.append((f"bench_off_b{size['big_batch']}", ["--batch_size", str(size["big_batch"])], 120))
    for name, flags, limit_s in runs:
        check.run(name, [*common, *flags, "--json", str(check.out / f"{name}.json")], limit_s)


def training_runs(check: Check):
    """Synthetic wells, then 3 epochs of train.py under AMP, one epoch under torchrun (1 process), and
    extract_latents.py's trajectories from the trained checkpoint."""
    size, out = check.size, check.out
    data = out / "data"
    check.run("synthetic_data", [sys.executable, "make_synthetic_data.py", "--out", str(data), "--seed", "0",
                                 *[f"--{k}={v}" for k, v in size["data"].items()]], limit_s=60)
    flags = ["--index_csv", str(data / "index.csv"), "--device", size["device"], "--amp", "bf16",
             "--image_size", str(size["image_size"]), "--seq_len", str(size["seq_len"]), "--batch_size",
             str(size["batch_size"]), "--num_workers", str(size["workers"]), "--warmup_epochs", "1",
             "--cache_dir", str(out / "cache"), "--use_classifier", *size["model"]]
    check.run("train_3_epochs_amp", [sys.executable, "train.py", *flags, "--num_epochs", "3",
                                     "--save_dir", str(out / "run" / "ckpt"), "--log_dir", str(out / "run" / "logs")],
              limit_s=120)
    check.run("torchrun_1_process", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", "1", "train.py", *flags, "--num_epochs", "1",
                                     "--save_dir", str(out / "ddp" / "ckpt"), "--log_dir", str(out / "ddp" / "logs")],
              limit_s=90)
    check.run("extract_trajectories", [sys.executable, "extract_latents.py", "--checkpoint",
                                       str(out / "run" / "ckpt" / "last.pt"), "--index_csv", str(data / "index.csv"),
                                       "--out", str(out / "latents"), "--mode", "trajectory", "--device",
                                       size["device"], "--cache_dir", str(out / "cache")], limit_s=90)


def largest_batch(size: dict, device, limit_s: float) -> dict:
    """The largest batch whose bf16 training step (default model unless dry run) fits: doubling from the
    first size, then bisection between the last fit and the first failure (resolution 1/16 of the batch)."""
    import torch

    import train
    from losses import AutoencoderLoss
    from model import ConvLSTMAutoencoder, config_from_args

    tiny = dict(cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=1, decoder_hidden_dim=8,
                decoder_layers=1, classifier_hidden=(16, 8)) if size["device"] == "cpu" else {}
    flags = train.get_args_parser().parse_args(["--use_classifier"])  # train.py's loss, classifier on
    config = config_from_args(flags, dict(image_size=size["image_size"], **tiny))
    model = ConvLSTMAutoencoder(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler, loss_fn = torch.amp.GradScaler(device.type, enabled=False), AutoencoderLoss.from_args(flags, config)
    start, deadline, peak = time.perf_counter(), time.perf_counter() + limit_s, {}

    def fits(b: int) -> bool:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            batch = {"video": torch.rand(b, size["seq_len"], 1, size["image_size"], size["image_size"], device=device),
                     "label": torch.zeros(b, dtype=torch.long, device=device)}
            train.train_step(model, batch, loss_fn, optimizer, scaler, torch.bfloat16, flags.grad_clip)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[b] = torch.cuda.max_memory_allocated(device) / 2**30
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            batch = None
            optimizer.zero_grad(set_to_none=True)
            gc.collect()

    low, high, cap = None, None, size["search"][1]
    b = size["search"][0]
    while b <= cap and time.perf_counter() < deadline:
        if not fits(b):
            high = b
            break
        low, b = b, b * 2
    while low is not None and high is not None and high - low > max(1, low // 16) and time.perf_counter() < deadline:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"largest_batch": low, "first_failing_batch": high, "capped_at": cap if high is None else None,
            "peak_gib_at_largest": peak.get(low), "seq_len": size["seq_len"], "image_size": size["image_size"],
            "seconds": round(time.perf_counter() - start, 1)}


def summarise(check: Check) -> dict:
    """Per bench run: clips/s, share of the bf16 matmul peak, peak memory, projected 50-epoch time."""
    rows = {}
    for name in check.steps:
        path = check.out / f"{name}.json"
        if not name.startswith("bench") or not path.is_file():
            continue
        r = json.loads(path.read_text())
        p = r["project"]
        rows[name] = {"batch_size": r["batch_size"], "compile": r["compile"], "clips_per_s": p["clips_per_s"],
                      "share_of_bf16_matmul": p["share_of_matmul"], "bf16_matmul_gflops": r["matmul_gflops"]["bf16"],
                      "peak_memory_mb": p["peak_memory_mb"],
                      "projected_50_epochs_min": TARGET_EPOCHS * TARGET_CLIPS / p["clips_per_s"] / 60}
    log = check.out / "run" / "logs" / cli.TRAINING_LOG
    train_log = json.loads(log.read_text()) if log.is_file() else []
    info = check.out / "latents" / "trajectories" / "info.json"
    return {"bench": rows, "train_clips_per_s": [e["clips_per_s"] for e in train_log],
            "extract": json.loads(info.read_text()) if info.is_file() else None}


def print_summary(result: dict):
    print(f"\n{result['device_name']}, torch {result['torch']}: the check took {result['seconds']:.0f} s")
    print(f"{'bench run':24s} {'B':>5s} {'clips/s':>9s} {'of bf16 mm':>10s} {'peak MB':>9s} "
          f"{'50 epochs x 13,300 clips':>25s}")
    for name, r in result["summary"]["bench"].items():
        print(f"{name:24s} {r['batch_size']:5d} {r['clips_per_s']:9.1f} {r['share_of_bf16_matmul']:10.1%} "
              f"{r['peak_memory_mb']:9.0f} {r['projected_50_epochs_min']:20.1f} min")
    search = result.get("batch_search") or {}
    print(f"largest batch at {search.get('image_size')} px, T={search.get('seq_len')}: "
          f"{search.get('largest_batch')} (first failing {search.get('first_failing_batch')}, peak "
          f"{search.get('peak_gib_at_largest')} GiB); target: under {TARGET_MINUTES} min, i.e. >= "
          f"{math.ceil(TARGET_EPOCHS * TARGET_CLIPS / TARGET_MINUTES / 60)} clips/s")
    failed = [name for name, step in result["steps"].items() if not step["ok"]]
    print("every step passed" if not failed else f"FAILED: {', '.join(failed)} (see gpu_check.log)")


def main(args) -> int:
    size = SIZES["dry_run" if args.dry_run else "gpu"]
    modes = (args.compile_modes or ("off" if args.dry_run else "off,step,gates")).split(",")
    if not set(modes) <= set(cli.COMPILE_CHOICES):
        raise cli.InputError(f"--compile_modes takes modes from {cli.COMPILE_CHOICES}, got {args.compile_modes}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env, missing = prepare_packages(out)
    if missing:
        raise cli.InputError(f"missing packages {missing}: put their wheels in {REPO / '.whl'} (BENCHMARKS.md, GPU "
                             f"check) or install them")
    import torch

    if size["device"] == "cuda" and not torch.cuda.is_available():
        raise cli.InputError("no CUDA GPU is visible; use --dry_run for the CPU version")
    device = torch.device(size["device"])
    check = Check(out, size, env)
    check.run("device_tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py",
                               *size["tests"]], limit_s=150)
    bench_runs(check, modes)
    training_runs(check)
    search = largest_batch(size, device, limit_s=max(10.0, min(90.0, check.left_s())))
    import bench

    result = {"device_name": bench.device_name(device), "torch": torch.__version__, "dry_run": args.dry_run,
              "seconds": time.perf_counter() - check.start, "steps": check.steps, "batch_search": search,
              "summary": summarise(check)}
    cli.write_json(out / "gpu_check.json", result)
    check.log.close()
    print_summary(result)
    return 0 if all(step["ok"] for step in check.steps.values()) else 1


if __name__ == "__main__":
    sys.exit(cli.run_main("gpu_check.py", main, get_args_parser().parse_args()))
