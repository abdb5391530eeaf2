"""The GPU check: one command showing that training, torchrun and extraction work on a CUDA GPU, and how fast.

    python3 gpu_check.py --out gpu_check_out        # one H200: under 8 minutes (`make gpu-check` runs the same)
    python3 gpu_check.py --dry_run --out /tmp/gc    # the same steps at a toy size on the CPU (what the tests run)

The steps, in this order, each a subprocess but the batch search, each within its share of the 8 minutes (SHARES): a
step may use what the steps before it left, never what the steps after it are owed. Device tests (tests/test_device.py
on CUDA: no host sync in a step, eager and as CUDA graphs at 64 px; compiled step = eager); 48 synthetic wells; train.py
for 3 epochs under bf16 autocast at the recommended batch with --num_workers auto; train.py under torchrun for one epoch
(2 processes, NCCL and DDP, when 2 GPUs are visible, else 1); extract_latents.py's trajectories; bench.py's default
model in bf16 at the recommended batch with the DataLoader beside it (clips/s of both, and which one limits); the
largest batch whose bf16 step fits at 128 px (doubling, then bisection: a failed trial, whatever its error, ends the
doubling); last, each --compile mode at the recommended batch, optional: one that runs out of time is reported as not
measured, not as a failure. A step's time-out ends its whole process group (torchrun's ranks too).
OUT/gpu_check.json is rewritten (atomically) after every step and every batch trial, so a crash keeps what was
measured; OUT/gpu_check.log has every step's output, and OUT/bench_*.json each bench run's figures. The wells, frame
cache, checkpoints and latents go to --work (about 1 GB; by default a temporary folder, removed at the end). The table
printed last gives per bench run clips/s, the share of the measured bf16 matmul peak, peak memory and the projected
time of 50 epochs over 13,300 clips; then the loader, the largest batch and why the search stopped. Exit code 1 when
a step failed, 2 on bad flags or missing packages.

Needs torch, numpy, pandas, opencv-python-headless, tqdm, pytest and pytorch-msssim; not the analysis packages.
A package missing there is installed from wheels in `.whl/` (see BENCHMARKS.md) into WORK/site, if present.
"""

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cli

REPO = Path(__file__).resolve().parent
NEEDED = {"torch": "torch", "numpy": "numpy", "pandas": "pandas", "cv2": "opencv-python-headless", "tqdm": "tqdm",
          "pytest": "pytest", "pytorch_msssim": "pytorch-msssim"}
TARGET_CLIPS, TARGET_EPOCHS, TARGET_MINUTES = 13_300, 50, 30  # the 704-embryo set, 50 epochs, under 30 minutes
BUDGET_S = 480  # 8 minutes: the shares below add up to it with the two default compile modes
SHARES = {  # seconds, in the order of the steps
    "device_tests": 150,  # starting Python and torch, and two whole-step compilations on CUDA
    "synthetic_data": 15,
    "train": 60,  # 3 epochs of ~24 steps at B=32, validation and checkpoints, the frame cache filled
    "torchrun": 45,  # one epoch, and the process group
    "extract": 30,
    "bench_eager": 60,  # the project and the plain reference at B=32, matmul probes, 32 wells of 500 px JPEGs
    "batch_search": 40,  # about 12 trials of one step each, the largest near B=512-1,024 (estimate)
    "bench_compiled": 40,  # each compile mode; the whole-step compile gets what earlier steps left as well
}
# (name, size): the real check on one GPU, and the toy one on the CPU that the tests run. batch: the batch size the
# README and chtc_sweep.txt recommend for a GPU (an estimate until this check has run), trained and benched here.
SIZES = {
    "gpu": dict(device="cuda", bench=["--config", "full", "--steps", "5", "--warmup", "2"], batch=32,
                train=["--learning_rate", "6e-4"], data=dict(n_embryos=48, n_frames=30, size=128), image_size=128,
                seq_len=20, model=[], tests=["-k", "cuda"], search=(8, 4096), budget_s=BUDGET_S, modes="gates,step"),
    "dry_run": dict(device="cpu", bench=["--config", "tiny", "--steps", "1", "--warmup", "1", "--threads", "1"],
                    batch=4, train=["--clips_per_recording", "2"], data=dict(n_embryos=8, n_frames=8, size=32),
                    image_size=32, seq_len=4, model=["--encoder_hidden_dim", "8", "--encoder_layers", "1",
                                                     "--decoder_hidden_dim", "8", "--decoder_layers", "1"],
                    tests=["-k", "cpu and not compiled"], search=(1, 4), budget_s=600, modes="off"),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=str, default="gpu_check_out",
                        help="folder for the record: gpu_check.json, gpu_check.log and each bench run's JSON, a few "
                             "hundred kB (default: %(default)s)")
    parser.add_argument("--work", type=str, default=None,
                        help="folder for the runs' wells, frame cache, checkpoints and latents, about 1 GB on a GPU "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--dry_run", action="store_true",
                        help="the same steps at a toy size on the CPU, in about a minute (default: off)")
    parser.add_argument("--compile_modes", type=str, default=None,
                        help="comma-separated --compile modes benched last, at the recommended batch, in this order; "
                             "'' for none (default: gates,step; off with --dry_run)")
    return parser


class Check:
    """The record of the steps (OUT/gpu_check.json, rewritten after each), the log file and the time budget."""

    def __init__(self, out: Path, work: Path, size: dict, env: dict, plan: list[str]):
        self.out, self.work, self.size, self.env = out, work, size, env
        self.start = time.perf_counter()
        self.plan = plan  # the SHARES keys of the steps still to come, in order
        self.result = {"dry_run": size["device"] == "cpu", "budget_s": size["budget_s"], "finished": False,
                       "steps": {}, "batch_search": None, "summary": {}}
        self.log = open(out / "gpu_check.log", "w")  # noqa: SIM115 (kept open for the whole check)

    def left_s(self) -> float:
        return self.size["budget_s"] - (time.perf_counter() - self.start)

    def limit_s(self, share: str) -> float:
        """What the step of this share may use: the budget left less the shares of the steps after it."""
        self.plan.remove(share)
        scale = self.size["budget_s"] / BUDGET_S
        return max(1.0, self.left_s() - scale * sum(SHARES[s] for s in self.plan))

    def record(self, name: str, record: dict):
        """Add a step's record, print its line, and rewrite gpu_check.json."""
        self.result["steps"][name] = record
        state = "ok" if record["ok"] else "not measured (time)" if record.get("optional") and \
            record["returncode"] == "timeout" else f"FAILED ({record['returncode']})"
        print(f"{name:24s} {state:>20s} {record['seconds']:7.1f} s", flush=True)
        self.save()

    def save(self):
        self.result.update(seconds=round(time.perf_counter() - self.start, 1), summary=summarise(self.out, self.work))
        cli.write_json(self.out / "gpu_check.json", self.result)

    def run(self, name: str, command: list[str], share: str, optional: bool = False) -> dict:
        """Run one step (a subprocess) within its limit; record and log it."""
        limit = self.limit_s(share)
        tick = time.perf_counter()
        self.log.write(f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)\n")
        self.log.flush()
        # its own process group, so that a time-out (or Ctrl-C here) ends torchrun's ranks with it
        process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = "timeout"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        record = {"ok": code == 0, "returncode": code, "seconds": round(time.perf_counter() - tick, 1),
                  "limit_s": round(limit), "optional": optional, "command": " ".join(command)}
        self.record(name, record)
        return record

    def failed(self) -> list[str]:
        """Steps that failed; an optional step that ran out of time was not measured, not failed."""
        return [name for name, r in self.result["steps"].items()
                if not r["ok"] and not (r.get("optional") and r["returncode"] == "timeout")]


def prepare_packages(work: Path, wheels: Path = REPO / ".whl", needed: dict = NEEDED) -> tuple[dict, list[str]]:
    """Environment for the subprocesses; packages missing from this Python are installed from the wheels in `wheels`
    into WORK/site (pip --no-index --no-deps --target: no network, nothing outside WORK)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    missing = [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]
    files = sorted(wheels.glob("*.whl"))
    if missing and files:
        site = work / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, files)], check=False)
        sys.path.insert(0, str(site))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        importlib.invalidate_caches()
        missing = [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]
    return env, missing


def training_runs(check: Check, processes: int):
    """Synthetic wells, then 3 epochs of train.py under AMP, one epoch under torchrun, and extract_latents.py's
    trajectories from the trained checkpoint."""
    size, work = check.size, check.work
    data = work / "data"
    check.run("synthetic_data", [sys.executable, "make_synthetic_data.py", "--out", str(data), "--seed", "0",
                                 *[f"--{k}={v}" for k, v in size["data"].items()]], "synthetic_data")
    flags = ["--index_csv", str(data / "index.csv"), "--device", size["device"], "--amp", "bf16",
             "--image_size", str(size["image_size"]), "--seq_len", str(size["seq_len"]), "--batch_size",
             str(size["batch"]), "--warmup_epochs", "1", "--cache_dir", str(work / "cache"), "--use_classifier",
             *size["train"], *size["model"]]
    check.run("train_3_epochs_amp", [sys.executable, "train.py", *flags, "--num_epochs", "3",
                                     "--save_dir", str(work / "run" / "ckpt"), "--log_dir", str(work / "run" / "logs")],
              "train")
    check.run(f"torchrun_{processes}_process{'es' if processes > 1 else ''}",
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "train.py", *flags, "--num_epochs", "1", "--save_dir", str(work / "ddp" / "ckpt"),
               "--log_dir", str(work / "ddp" / "logs")], "torchrun")
    check.run("extract_trajectories", [sys.executable, "extract_latents.py", "--checkpoint",
                                       str(work / "run" / "ckpt" / "last.pt"), "--index_csv", str(data / "index.csv"),
                                       "--out", str(work / "latents"), "--mode", "trajectory", "--device",
                                       size["device"], "--cache_dir", str(work / "cache")], "extract")


def bench_run(check: Check, mode: str, optional: bool):
    """bench.py in bf16 at the recommended batch: eager with the DataLoader beside it, or a --compile mode alone."""
    size = check.size
    name = f"bench_{'eager' if not optional else mode}_b{size['batch']}"
    loader = ["--num_workers", "auto"] if not optional else ["--skip_loader"]
    check.run(name, [sys.executable, "bench.py", "--device", size["device"], "--amp", "bf16", "--use_classifier",
                     *size["bench"], "--batch_size", str(size["batch"]), "--compile", mode, *loader,
                     "--json", str(check.out / f"{name}.json")], "bench_compiled" if optional else "bench_eager",
              optional)


def search_batch(trial, first: int, cap: int, expired, on_trial=lambda record: None) -> dict:
    """The largest batch b for which trial(b) returns (its peak memory in GiB, or None) rather than raising: doubling
    from `first` up to `cap`, then bisection between the last batch that worked and the first that failed, to 1/16
    of the batch. Any exception fails a trial (out of memory; a cuDNN or 32-bit indexing error of a huge batch) and
    is recorded with its first line; on_trial(record) follows every trial. `stopped` says why the search ended:
    "failed at B: <error>", "cap" or "deadline" (expired() said so)."""
    trials = []

    def works(b: int) -> bool:
        tick = time.perf_counter()
        try:
            record = {"batch": b, "ok": True, "peak_gib": trial(b)}
        except Exception as err:  # noqa: BLE001 (any failure of one trial is a result, not the end of the check)
            line = (str(err).strip().splitlines() or [""])[0][:200]
            record = {"batch": b, "ok": False, "error": f"{type(err).__name__}: {line}"}
        trials.append({**record, "seconds": round(time.perf_counter() - tick, 2)})
        on_trial(trials[-1])
        return record["ok"]

    low, high, stopped, b = None, None, None, first
    while stopped is None and high is None:
        if b > cap or expired():
            stopped = "cap" if b > cap else "deadline"
        elif works(b):
            low, b = b, b * 2
        else:
            high = b
    while stopped is None and low is not None and high - low > max(1, low // 16):
        if expired():
            stopped = "deadline"
            break
        middle = (low + high) // 2
        low, high = (middle, high) if works(middle) else (low, middle)
    if stopped is None:
        stopped = f"failed at {high}: " + next(t["error"] for t in trials if t["batch"] == high and not t["ok"])
    peak = next((t["peak_gib"] for t in trials if t["batch"] == low and t["ok"]), None)
    return {"largest_batch": low, "first_failing_batch": high, "stopped": stopped, "peak_gib_at_largest": peak,
            "trials": trials}


def largest_batch(check: Check, device) -> dict:
    """search_batch on the bf16 training step of the default model (a toy one on the CPU) with train.py's loss,
    classifier on, at the check's image size and clip length; each trial goes into gpu_check.json at once."""
    import torch

    import train
    from losses import AutoencoderLoss
    from model import ConvLSTMAutoencoder, config_from_args

    size, limit, start = check.size, check.limit_s("batch_search"), time.perf_counter()
    tiny = dict(cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=1, decoder_hidden_dim=8,
                decoder_layers=1, classifier_hidden=(16, 8)) if device.type == "cpu" else {}
    flags = train.get_args_parser().parse_args(["--use_classifier"])
    config = config_from_args(flags, dict(image_size=size["image_size"], **tiny))
    model = ConvLSTMAutoencoder(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler, loss_fn = torch.amp.GradScaler(device.type, enabled=False), AutoencoderLoss.from_args(flags, config)
    search = {"seq_len": size["seq_len"], "image_size": size["image_size"], "trials": []}
    check.result["batch_search"] = search

    def trial(b: int) -> float | None:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            batch = {"video": torch.rand(b, size["seq_len"], 1, size["image_size"], size["image_size"], device=device),
                     "label": torch.zeros(b, dtype=torch.long, device=device)}
            train.train_step(model, batch, loss_fn, optimizer, scaler, torch.bfloat16, flags.grad_clip)
            if device.type != "cuda":
                return None
            torch.cuda.synchronize(device)
            return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        finally:
            batch = None
            optimizer.zero_grad(set_to_none=True)
            gc.collect()

    def on_trial(record: dict):
        search["trials"].append(record)
        check.save()

    found = search_batch(trial, *size["search"], lambda: time.perf_counter() - start > limit, on_trial)
    search.update(found, seconds=round(time.perf_counter() - start, 1))
    check.record("batch_search", {"ok": found["largest_batch"] is not None, "returncode": found["stopped"],
                                  "seconds": search["seconds"], "limit_s": round(limit), "optional": False})
    return search


def summarise(out: Path, work: Path) -> dict:
    """What the finished steps left in OUT and WORK: per bench run clips/s, share of the bf16 matmul peak, peak memory
    and the projected 50-epoch time; the loader beside the step; train.py's clips/s per epoch; the extraction's info."""
    rows, loader = {}, None
    for path in sorted(out.glob("bench_*.json")):
        r = json.loads(path.read_text())
        p = r["project"]
        rows[path.stem] = {"batch_size": r["batch_size"], "compile": r["compile"], "clips_per_s": p["clips_per_s"],
                           "share_of_bf16_matmul": p["share_of_matmul"],
                           "bf16_matmul_gflops": r["matmul_gflops"]["bf16"], "peak_memory_mb": p["peak_memory_mb"],
                           "projected_50_epochs_min": TARGET_EPOCHS * TARGET_CLIPS / p["clips_per_s"] / 60}
        loader = r.get("loader", loader)
    log = work / "run" / "logs" / cli.TRAINING_LOG
    info = work / "latents" / cli.TRAJECTORY_DIR / "info.json"
    return {"bench": rows, "loader": loader,
            "train_clips_per_s": [e["clips_per_s"] for e in json.loads(log.read_text())] if log.is_file() else [],
            "extract": json.loads(info.read_text()) if info.is_file() else None}


def print_summary(result: dict):
    print(f"\n{result['device_name']}, torch {result['torch']}: the check took {result['seconds']:.0f} s")
    print(f"{'bench run':24s} {'B':>5s} {'clips/s':>9s} {'of bf16 mm':>10s} {'peak MB':>9s} "
          f"{'50 epochs x 13,300 clips':>25s}")
    for name, r in result["summary"]["bench"].items():
        print(f"{name:24s} {r['batch_size']:5d} {r['clips_per_s']:9.1f} {r['share_of_bf16_matmul']:10.1%} "
              f"{r['peak_memory_mb']:9.0f} {r['projected_50_epochs_min']:20.1f} min")
    loader = result["summary"]["loader"]
    if loader:
        print(f"loader ({loader['num_workers']} workers): cached {loader['cached_clips_per_s']:.0f} clips/s, raw JPEG "
              f"{loader['raw_jpeg_clips_per_s']:.0f} clips/s; the eager step {loader['model_clips_per_s']:.0f} "
              f"clips/s: {loader['limited_by']} limits")
    search = result.get("batch_search") or {}
    print(f"largest batch at {search.get('image_size')} px, T={search.get('seq_len')}: {search.get('largest_batch')} "
          f"(peak {search.get('peak_gib_at_largest')} GiB; stopped: {search.get('stopped')}); target: under "
          f"{TARGET_MINUTES} min, i.e. >= {math.ceil(TARGET_EPOCHS * TARGET_CLIPS / TARGET_MINUTES / 60)} clips/s")
    failed = result["failed"]
    print("every step passed" if not failed else f"FAILED: {', '.join(failed)} (see gpu_check.log)")


def folders(args) -> tuple[Path, Path, bool]:
    """OUT and WORK, each new or empty (an earlier check's runs would resume, its figures mix with these), and whether
    WORK is a temporary folder, removed at the end."""
    out, work = Path(args.out), Path(args.work) if args.work else None
    for flag, folder in (("--out", out), ("--work", work)):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            raise cli.InputError(f"{flag} {folder} is not empty (an earlier check?); choose a new folder or remove it")
    out.mkdir(parents=True, exist_ok=True)
    if work is None:
        return out, Path(tempfile.mkdtemp(prefix="gpu_check_")), True
    work.mkdir(parents=True, exist_ok=True)
    return out, work, False


def run_check(size: dict, modes: list[str], out: Path, work: Path) -> int:
    """Every step in order (module docstring); the table last; 1 when a step failed."""
    env, missing = prepare_packages(work)
    if missing:
        raise cli.InputError(f"missing packages {missing}: put their wheels in {REPO / '.whl'} (BENCHMARKS.md, GPU "
                             f"check) or install them")
    import torch

    import bench

    if size["device"] == "cuda" and not torch.cuda.is_available():
        raise cli.InputError("no CUDA GPU is visible; use --dry_run for the CPU version")
    device = torch.device(size["device"])
    plan = ["device_tests", "synthetic_data", "train", "torchrun", "extract", "bench_eager", "batch_search",
            *["bench_compiled"] * len(modes)]
    check = Check(out, work, size, env, plan)
    check.result.update(device_name=bench.device_name(device), torch=torch.__version__)
    check.run("device_tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py",
                               *size["tests"]], "device_tests")
    training_runs(check, processes=2 if device.type == "cuda" and torch.cuda.device_count() >= 2 else 1)
    bench_run(check, "off", optional=False)
    try:
        largest_batch(check, device)
    except Exception as err:  # noqa: BLE001 (a failed set-up is one failed step; the compiled benches still run)
        check.record("batch_search", {"ok": False, "returncode": f"{type(err).__name__}: {err}"[:200], "seconds": 0.0})
    for mode in modes:
        bench_run(check, mode, optional=True)
    check.result.update(finished=True, failed=check.failed())
    check.save()
    check.log.close()
    print_summary(check.result)
    return 1 if check.result["failed"] else 0


def main(args) -> int:
    size = SIZES["dry_run" if args.dry_run else "gpu"]
    modes = [m for m in (size["modes"] if args.compile_modes is None else args.compile_modes).split(",") if m]
    if not set(modes) <= set(cli.COMPILE_CHOICES):
        raise cli.InputError(f"--compile_modes takes modes from {cli.COMPILE_CHOICES}, got {args.compile_modes}")
    out, work, temporary = folders(args)
    try:
        return run_check(size, modes, out, work)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(cli.run_main("gpu_check.py", main, get_args_parser().parse_args()))
