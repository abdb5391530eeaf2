"""What every script shares: the one-line argument parser, the error types and exit codes, the stop signals,
shared flags, the choice of device, autocast dtype and loader workers, the one atomic file writer, the file names
of the log and latents folders, and the table of loss parts (folders written whole: output_folder.py).

Importing this module loads no torch (build_index.py and the analysis use it); the device functions
import torch when called.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # bad flags or input, or a save_dir in use: one line, nothing written
EXIT_NON_FINITE = 3  # non-finite loss or weights; every checkpoint on disk stays finite
EXIT_WRITE_ERROR = 74  # an OS error while writing (EX_IOERR); the previous files stay intact
EXIT_STOPPED = 85  # SIGTERM/SIGUSR1 arrived and the state was saved (HTCondor's checkpoint_exit_code)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT, 128 + 2 as a shell reports it): saved as for 85; a second one ends at once
# A batch system's preemption, a checkpoint-now request, a terminal's Ctrl-C (sent to the whole process group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

DEVICE_CHOICES = ("auto", "cpu", "cuda")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# --compile: off; gates = the ConvLSTM gate arithmetic (what `--compile` alone means); step = the whole forward and loss
COMPILE_CHOICES = ("off", "gates", "step")
DEFAULT_SEED = 42
# --num_workers auto: on the CPU the training step uses the cores itself, and 2 workers already give about 560 cached
# clips/s there (BENCHMARKS.md), hundreds of times what the step takes; a GPU step takes 650-1,000 clips/s (issue 21),
# so there every core but the process's own loads clips, up to a point where more workers only cost memory.
CPU_WORKERS = 2
MAX_GPU_WORKERS = 16
# Old names of flag choices, still accepted (and found in older checkpoints' args): flag -> {old: current}.
FLAG_ALIASES = {"normalize": {"minmax01": "percentile"}, "compile": {False: "off", True: "gates"}}

# What train.py writes into --log_dir (read by demo_report.py and gpu_check.py too).
TRAINING_LOG = "training_log.json"
TRAINING_CURVES = "training_curves.png"  # per-epoch loss curves beside the log
RECON_PNG = "recon_epoch_{epoch}.png"  # a fixed clip's frames above their reconstruction

# The latents folder that extract_latents.py writes and analyze_latents.py reads.
TRAJECTORY_DIR = "trajectories"  # one <k>_<embryo>.npz per recording
CLIPS_DIR = "clips"
METADATA_CSV = "metadata.csv"
LATENT_KEY = "z"  # (n, C) pooled latents of the trained model, one row per frame
UNTRAINED_KEY = "z_untrained"  # (n, C) the same frames through an untrained model of the same config (seeded)
PIXELS_KEY = "pixels"  # (n, P) the same frames' raw pixels, area-downsampled and flattened


@dataclass(frozen=True)
class LossPart:
    """One term of the training loss. Its flag, the flag's default and help, its log keys (`name`, `val_<name>`),
    its curve, its resume policy and its weight in losses.AutoencoderLoss all follow from this row; losses.py
    computes it in the function named `name`."""

    name: str  # log key, and the name of its function in losses.py
    flag: str  # the weight flag
    default: float
    help: str
    title: str = ""  # the training curve's title (default: the name)
    needs: str | None = None  # the ModelConfig switch without which the part is off (weight 0)
    resume: str = "refuse"  # checkpoint.RESUME_FLAGS policy of the weight flag
    reconstruction: bool = False  # part of the `reconstruction` log key (the weighted frame loss)


# The loss parts in the order logs and checkpoints list them (append new ones at the end); total = the sum of
# weight x part over the parts, `reconstruction` = the same over the parts marked so.
LOSS_PARTS = (
    LossPart("l1", "l1_weight", 0.5, "weight of the L1 loss", reconstruction=True),
    LossPart("ms_ssim", "ms_ssim_weight", 0.5, "weight of 1 - MS-SSIM", title="1 - MS-SSIM", reconstruction=True),
    LossPart("smooth", "smooth_weight", 0.1, "weight of the latent temporal smoothness loss"),
    LossPart("classification", "cls_weight", 0.1, "weight of the classification loss on labelled clips",
             needs="use_classifier"),
    LossPart("prediction", "predict_weight", 0.5, "weight of the next-frame guess's loss (L1 and 1 - MS-SSIM "
             "weighted as for the reconstruction)", needs="predict_next"),
    LossPart("contrast", "contrast_weight", 0.0, "weight of the two-view term (off at 0): each training clip is "
             "also drawn as another well would record it (shift, zoom, rotation, flips, gain, gamma, blur), both "
             "are encoded, and InfoNCE pulls each frame's pooled latent to the same frame of the other view and "
             "away from every other frame and clip of the batch (--contrast_temperature)"),
    LossPart("time_gap", "time_gap_weight", 0.0, "weight of the time-gap term (off at 0): a linear clock read from "
             "each frame's pooled latent guesses the time between every two frames of a clip (mean absolute error, "
             "in fractions of the recording); best with --sampling span", title="time gap"),
    LossPart("phase", "phase_weight", 0.0, "weight of a supervised per-frame phase head on the pooled latent (off "
             "at 0; needs --annotations_dir; frames without a phase add nothing): makes the run supervised, the "
             "ceiling of the self-supervised runs"),
)
LOSS_KEYS = ("total", "reconstruction", *(part.name for part in LOSS_PARTS))  # what the log holds per epoch
LOSS_WEIGHT_FLAGS = tuple(part.flag for part in LOSS_PARTS)


def add_loss_args(group):
    """The weight flag of every loss part, and the two-view term's temperature (train.py, verify_data_connection.py,
    bench.py)."""
    for part in LOSS_PARTS:
        used = f"; used only with --{part.needs}" if part.needs else ""
        group.add_argument(f"--{part.flag}", type=float, default=part.default,
                           help=f"{part.help}{used} (default: %(default)s)")
    group.add_argument("--contrast_temperature", type=float, default=0.1,
                       help="temperature of the two-view term's InfoNCE (default: %(default)s)")


class ScriptError(Exception):
    """An error that ends a script with one stderr line and its exit code."""

    exit_code = 1


class InputError(ScriptError, ValueError):
    """Bad flags, files or rows: one line naming the flag, file or row and what to do; exit 2."""

    exit_code = EXIT_BAD_INPUT


class NonFiniteError(ScriptError):
    """A non-finite loss or non-finite weights: one line naming where; the last good checkpoint stays; exit 3."""

    exit_code = EXIT_NON_FINITE


def stop_exit_code(signal_name: str) -> int:
    """The exit code of a run ended by a stop signal: 130 for Ctrl-C (SIGINT), else 85."""
    return EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_STOPPED


class Stopped(ScriptError):
    """A stop signal arrived and there was nothing (new) to save: one line; exit 85 (130 for SIGINT), the same
    command continues."""

    exit_code = EXIT_STOPPED

    def __init__(self, message: str, signal_name: str = "SIGTERM"):
        super().__init__(message)
        self.exit_code = stop_exit_code(signal_name)


class WriteError(ScriptError, OSError):
    """An OS error while writing (disk full, folder gone): one line with the path and the reason; exit 74."""

    exit_code = EXIT_WRITE_ERROR

    def __init__(self, path, err: OSError):
        super().__init__(f"cannot write {path} ({err.strerror or err}); free some space or choose another folder")


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (exit code 2), not a usage dump."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


class StopSignal:
    """Handler of STOP_SIGNALS. It records the first one, so that train.py's loop finishes its step and saves; while
    `discard` (what is dropped, in words) is set it raises Stopped at once instead, for a script with nothing to
    save (extraction, analysis). A Ctrl-C after any stop signal ends at once (KeyboardInterrupt)."""

    def __init__(self, discard: str | None = None):
        self.received, self.discard = None, discard

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        self.received = name
        if self.discard:
            discard, self.discard = self.discard, None
            raise Stopped(f"{name}: {discard}; exit {stop_exit_code(name)}", name)

    def end(self, what: str, say: bool = True) -> int:
        """The exit code of a run this signal ended after `what` (in words), printed with it when `say`."""
        if say:
            print(f"{self.received}: {what}; exit {stop_exit_code(self.received)}", flush=True)
        return stop_exit_code(self.received)


@contextlib.contextmanager
def stop_signals(stop: StopSignal):
    """STOP_SIGNALS go to `stop` inside the block (call from the main thread); the previous handlers after it."""
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def stop_signals_held():
    """STOP_SIGNALS held back inside the block (call from the main thread): blocked in this thread and in every process
    forked meanwhile (a child starts with its parent's mask), and recorded when another thread takes one; all are
    delivered to the handlers in place when the block ends."""
    arrived = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        try:
            for s, handler in previous.items():
                signal.signal(s, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # those pending in this thread arrive here
        for signum in arrived:
            signal.raise_signal(signum)


def add_seed_arg(parser, what: str = "weights, split and sampling"):
    """--seed, with the one default every script shares."""
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"seed of {what}, 0 <= seed < 2**32 (default: %(default)s)")


def add_device_args(parser, amp: bool = True, compile: bool = False, compile_aliases: tuple = ()):
    """--device, --amp (unless amp=False) and, with compile=True, --compile {off,gates,step} of the training step."""
    parser.add_argument("--device", type=str, default="auto", choices=DEVICE_CHOICES,
                        help="auto = CUDA when available (default: %(default)s)")
    if amp:
        parser.add_argument("--amp", type=str, default="auto", choices=AMP_CHOICES,
                            help="autocast dtype; auto = bf16 on CUDA and on CPUs with native bf16, else off "
                                 "(default: %(default)s)")
    if compile:
        parser.add_argument("--compile", *compile_aliases, type=str, nargs="?", const="gates", default="off",
                            choices=COMPILE_CHOICES, dest="compile",
                            help="torch.compile the training step: gates = the ConvLSTM gate arithmetic only (what "
                                 "--compile alone means; about 10%% faster on a CPU after a 20 s compile); step = "
                                 "the whole forward and loss, the unrolled time loop included, as one graph (CUDA "
                                 "graphs on CUDA: no launch overhead; full batches only; minutes to compile) "
                                 "(default: %(default)s)")


def auto_or_count(minimum: int) -> Callable[[str], int | str]:
    """The argparse type of a flag that takes 'auto' or a whole number >= minimum (--num_workers, --state_stride)."""

    def parse(value: str) -> int | str:
        if value == "auto":
            return value
        try:
            count = int(value)
        except ValueError:
            count = minimum - 1
        if count < minimum:
            raise argparse.ArgumentTypeError(f"expected auto or a whole number >= {minimum}, got {value!r}")
        return count

    return parse


num_workers_arg = auto_or_count(0)  # one function: every script's --num_workers has the same type


def add_num_workers_arg(group):
    """--num_workers, shared by train.py, verify_data_connection.py, extract_latents.py and bench.py."""
    group.add_argument("--num_workers", type=num_workers_arg, default="auto",
                       help=f"DataLoader worker processes; auto = {CPU_WORKERS} on the CPU (whose cores the step "
                            f"itself uses), on a GPU the CPU cores available to each process of this machine less "
                            f"one, at most {MAX_GPU_WORKERS} (default: %(default)s)")


def resolve_num_workers(value: int | str, device_type: str, processes: int | None = None) -> int:
    """The workers of a --num_workers value: a number as given; auto as its help says, from the cores this process may
    run on (sched_getaffinity where the OS has it) shared among the `processes` of this machine (default: torchrun's
    LOCAL_WORLD_SIZE, else 1)."""
    if value != "auto":
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device_type != "cuda":
        return min(CPU_WORKERS, cores)
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(MAX_GPU_WORKERS, cores // processes - 1))


def check_seed(seed: int):
    """numpy and torch take seeds in [0, 2**32)."""
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed must be in [0, 2**32), got {seed}")


def check_numbers(args, at_least: dict[str, float], finite: tuple[str, ...] = (), above: tuple[str, ...] = ()):
    """InputError naming the first flag in `finite` that is NaN or infinite, that is below its `at_least` value, or
    that is not above 0 (`above`) (None values, meaning "the default", are skipped)."""
    for name in finite:
        if not math.isfinite(getattr(args, name)):
            raise InputError(f"--{name} must be a finite number, got {getattr(args, name)}")
    for name, low in {**at_least, **dict.fromkeys(above, 0)}.items():
        value = getattr(args, name)
        if value is not None and not (value > low if name in above else value >= low):
            raise InputError(f"--{name} must be {'above' if name in above else 'at least'} {low}, got {value}")


def check_loss_weights(args):
    """InputError for a loss weight changed from its default while its part is off (LossPart.needs)."""
    for part in LOSS_PARTS:
        if part.needs and not getattr(args, part.needs) and getattr(args, part.flag) != part.default:
            raise InputError(f"--{part.flag} weights a loss part that only --{part.needs} turns on; pass "
                             f"--{part.needs} or drop --{part.flag}")


def check_writable(flag: str, folder):
    """InputError unless `folder` is, or can be made in, a writable folder."""
    probe = Path(folder).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {folder} cannot be written ({probe} is not a writable folder); choose another")


def resolve_device(name: str):
    """'auto' picks CUDA when available; 'cuda' without a GPU is an input error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp_dtype(amp: str, device):
    """Autocast dtype for --amp auto|bf16|fp16|off; None means plain fp32."""
    import torch

    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if amp == "fp16" and device.type == "cpu":
        raise InputError("--amp fp16 needs a CUDA GPU; use bf16 or off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def atomic_write(path: Path, write: Callable[[BinaryIO], object]):
    """write(file) into a temp file beside path, fsync, then rename over path. An OSError (disk full,
    folder gone) removes the temp file, leaves the old path as it was and raises WriteError (exit 74)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, ScriptError):
            raise WriteError(path, err) from None
        raise


def write_bytes(path: Path, data: bytes):
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, value):
    write_bytes(path, json.dumps(value, indent=1).encode())


def run_main(prog: str, main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Call main(args) and turn the errors it lets through into the exit-code table, one stderr line each (a stop
    is not an error; a second Ctrl-C, or the first where main keeps Python's handler, ends at once: 130)."""
    try:
        return main(args) or EXIT_OK
    except Stopped as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except ScriptError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: SIGINT: stopped at once; exit {EXIT_INTERRUPTED}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
