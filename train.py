"""Train the ConvLSTM autoencoder on embryo time-lapse clips: CPU, one GPU, or several with torchrun.

    python train.py --index_csv data/index.csv --num_epochs 50
    torchrun --standalone --nproc_per_node 4 train.py --index_csv data/index.csv

Running the same command again continues from save_dir/last.pt. Exit codes: 0 done; 2 bad
arguments or input (one line, nothing written); 3 non-finite loss (the last good checkpoint is
kept); 85 stopped by SIGTERM or SIGUSR1 after writing last.pt (HTCondor's checkpoint_exit_code).
On the CPU with a fixed seed, a run killed at any point and resumed ends with the same weights,
bit for bit, as an uninterrupted run; on CUDA, cuDNN algorithm choice makes runs close, not equal.
"""

import argparse
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

import cli
import model as model_lib
from conv_lstm import compile_gate_updates
from dataset_ivf import IVFSequenceDataset, add_data_args
from losses import AutoencoderLoss

EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_PREEMPTED = 2, 3, 85
LOSS_KEYS = ("total", "reconstruction", "l1", "ms_ssim", "smooth", "classification")


class OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are a single line (exit code 2), not a usage dump."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="train.py", description="Train the ConvLSTM autoencoder on index.csv clips.")
    model_lib.add_model_args(parser)
    add_data_args(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=8, help="clips per step and process (default: %(default)s)")
    g.add_argument("--num_epochs", type=int, default=50, help="epochs to train (default: %(default)s)")
    g.add_argument("--learning_rate", type=float, default=3e-4, help="AdamW peak learning rate (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=1e-5, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--warmup_epochs", type=int, default=2,
                   help="linear warm-up epochs before the cosine decay (default: %(default)s)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: %(default)s)")
    g.add_argument("--l1_weight", type=float, default=0.5, help="weight of the L1 loss (default: %(default)s)")
    g.add_argument("--ms_ssim_weight", type=float, default=0.5, help="weight of 1 - MS-SSIM (default: %(default)s)")
    g.add_argument("--smooth_weight", type=float, default=0.1,
                   help="weight of the latent temporal smoothness loss (default: %(default)s)")
    g.add_argument("--cls_weight", type=float, default=0.1,
                   help="weight of the classification loss on labelled clips; used only with "
                        "--use_classifier (default: %(default)s)")
    g.add_argument("--save_dir", type=str, default="checkpoints", help="checkpoint folder (default: %(default)s)")
    g.add_argument("--log_dir", type=str, default="logs",
                   help="folder for training_log.json, split.csv and recon PNGs (default: %(default)s)")
    g.add_argument("--save_every", type=int, default=5,
                   help="write checkpoint_epoch_<N>.pt every N epochs and at the end (default: %(default)s)")
    g.add_argument("--resume_from", type=str, default=None,
                   help="checkpoint to start from when save_dir has no last.pt yet; save_dir/last.pt, when "
                        "present, always wins so that rerunning a command continues it (default: %(default)s)")
    g.add_argument("--seed", type=int, default=42, help="seed of weights, split and sampling (default: %(default)s)")
    g.add_argument("--device", type=str, default="auto", choices=cli.DEVICE_CHOICES,
                   help="auto = CUDA when available (default: %(default)s)")
    g.add_argument("--amp", type=str, default="auto", choices=cli.AMP_CHOICES,
                   help="autocast dtype; auto = bf16 on CUDA and on CPUs with native bf16, else off "
                        "(default: %(default)s)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the ConvLSTM gate arithmetic (not the unrolled time loop): about 10%% "
                        "faster steps after a one-off compile (default: off)")
    g.add_argument("--log_every", type=int, default=10,
                   help="update the progress bar and check the loss every N steps (default: %(default)s)")
    return parser


class BadInput(ValueError):
    """A bad flag, file or checkpoint: reported in one line, exit code 2."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf."""


class StopSignal:
    """Signal handler that only records SIGTERM/SIGUSR1; the loop finishes its step, then saves."""

    received: str | None = None

    def __call__(self, signum, frame):
        self.received = signal.Signals(signum).name


@dataclass
class Run:
    """What the loop needs about this process."""

    args: argparse.Namespace
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world_size: int
    steps_per_epoch: int
    stop: StopSignal

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def stop_requested(self) -> bool:
        """True when any rank got a stop signal; every rank reaches the same answer."""
        if self.world_size == 1:
            return self.stop.received is not None
        flag = torch.tensor(float(self.stop.received is not None), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0


@dataclass
class EpochProgress:
    """Position inside an epoch, saved with a mid-epoch last.pt so a resumed epoch logs the same."""

    step: int
    sums: torch.Tensor  # (len(LOSS_KEYS),) running sums of the per-step losses
    clips: int = 0
    time_s: float = 0.0


class ResumableSampler(Sampler):
    """DistributedSampler's order for (seed, epoch), optionally skipping the batches already done."""

    def __init__(self, dataset, world_size: int, rank: int, seed: int):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0):
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self):
        return len(self.inner) - self.skip


def leave_process_group(worker_id: int):
    """DataLoader worker init: a SIGTERM sent to the whole process group (by `timeout`, a shell)
    would kill the workers mid-batch; outside the group, only the main process gets it, finishes
    its step, saves and then stops the workers itself."""
    os.setpgid(0, 0)


def check_args(args):
    """Flag values that argparse cannot check; raises BadInput."""
    lowest = {**dict.fromkeys(("batch_size", "num_epochs", "save_every", "log_every", "seq_len"), 1),
              **dict.fromkeys(("weight_decay", "warmup_epochs", "grad_clip", "l1_weight", "ms_ssim_weight",
                               "smooth_weight", "cls_weight", "num_workers"), 0)}
    for name, low in lowest.items():
        if not getattr(args, name) >= low:
            raise BadInput(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not args.learning_rate > 0:
        raise BadInput(f"--learning_rate must be > 0, got {args.learning_rate}")
    if not 0 <= args.val_fraction < 1:
        raise BadInput(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    for flag, folder in (("--save_dir", args.save_dir), ("--log_dir", args.log_dir)):
        probe = Path(folder).absolute()
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise BadInput(f"{flag} {folder} cannot be written ({probe} is not a writable folder); choose another")


def load_resume_checkpoint(args, config: model_lib.ModelConfig) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, checked against the flags: save_dir/last.pt when it exists
    (so that the same command continues after a preemption), else --resume_from."""
    path = Path(args.save_dir) / "last.pt"
    if not path.is_file():
        if not args.resume_from:
            return None, None
        path = Path(args.resume_from)
        if not path.is_file():
            raise BadInput(f"--resume_from {path}: file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, whatever the unpickler raised
        raise BadInput(f"{path}: cannot read checkpoint ({type(err).__name__}); move it away") from err
    saved = json.loads(json.dumps(checkpoint.get("model_config", {})))
    wanted = json.loads(json.dumps(asdict(config)))
    diff = [f"{k}={saved.get(k)} in the checkpoint, {wanted.get(k)} from the flags"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if diff:
        raise BadInput(f"{path} has another model config ({'; '.join(diff)}); pass the same model flags "
                       f"or use a new --save_dir")
    return checkpoint, path


def rng_state(device: torch.device) -> dict:
    """RNG states as plain tensors/lists, so that weights_only=True loads them."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(py_state), gauss]}


def set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_atomic(write, path: Path):
    """write(file) into a temp file in path's folder, fsync, then rename over path."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def weights_digest(state_dict: dict) -> str:
    """sha256 over the names and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_reconstruction(raw_model, clip: torch.Tensor, path: Path, run: Run):
    """PNG of a clip's frames (top row) above the model's reconstruction (bottom row)."""
    raw_model.eval()
    with torch.no_grad(), run.autocast():
        recon = raw_model(clip[None].to(run.device))["reconstruction"][0].float().cpu()  # (T, 1, H, W)
    rows = [torch.cat(list(video[:, 0]), dim=1) for video in (clip, recon)]  # each (H, T*W)
    image = (torch.cat(rows, dim=0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    cv2.imwrite(str(path), image)


def check_finite(bad_step: torch.Tensor, epoch: int, run: Run):
    """Raise NonFiniteLoss if any rank saw a non-finite loss this epoch (bad_step >= 0)."""
    if run.world_size > 1:
        bad_step = bad_step.clone()
        dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
    step = int(bad_step.item())
    if step >= 0:
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {step + 1} of {run.steps_per_epoch}; "
                            f"stopped, the last good checkpoint in {run.args.save_dir} is kept "
                            f"(try a lower --learning_rate or --amp off)")


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, scaler, run: Run, epoch: int,
                    progress: EpochProgress) -> bool:
    """Train over loader from progress.step on; returns True when a stop signal cut the epoch short."""
    model.train()
    bad_step = torch.full((), -1, dtype=torch.long, device=run.device)
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.args.num_epochs}", initial=progress.step,
               total=run.steps_per_epoch, disable=None if run.is_main else True, dynamic_ncols=True, leave=False)
    start, stop = time.perf_counter(), False
    for batch in bar:
        video = batch["video"].to(run.device, non_blocking=True)  # (B, T, 1, H, W)
        labels = batch["label"].to(run.device, non_blocking=True) if run.args.use_classifier else None
        with run.autocast():
            output = model(video)
        parts = loss_fn(output, video, labels)  # fp32 scalars, computed outside autocast
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts["total"]).backward()
        if run.args.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses = torch.stack([parts[k].detach().float() for k in LOSS_KEYS])  # stays on device: no sync
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(losses).all(), progress.step, bad_step)
        progress.sums += losses
        progress.step += 1
        progress.clips += video.shape[0] * run.world_size
        log_point = progress.step % run.args.log_every == 0
        # one process: a flag check each step; DDP: all ranks agree at log points (no per-step host sync)
        stop = run.stop_requested() if run.world_size == 1 or log_point else False
        if stop or log_point:
            check_finite(bad_step, epoch, run)
            means = (progress.sums / progress.step).tolist()
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_KEYS[:4], means[:4], strict=True)}, refresh=False)
        if stop:
            break
    bar.close()
    check_finite(bad_step, epoch, run)
    progress.time_s += time.perf_counter() - start
    return stop and progress.step < run.steps_per_epoch


@torch.no_grad()
def evaluate(raw_model, loader, loss_fn, run: Run) -> dict:
    """Mean validation losses over all ranks, keys prefixed with val_."""
    raw_model.eval()
    sums = torch.zeros(len(LOSS_KEYS) + 1, device=run.device)  # clip-weighted sums, then the clip count
    for batch in loader:
        video = batch["video"].to(run.device, non_blocking=True)  # (B, T, 1, H, W)
        labels = batch["label"].to(run.device, non_blocking=True) if run.args.use_classifier else None
        with run.autocast():
            output = raw_model(video)
        parts = loss_fn(output, video, labels)
        sums[:-1] += torch.stack([parts[k].float() for k in LOSS_KEYS]) * video.shape[0]
        sums[-1] += video.shape[0]
    if run.world_size > 1:
        dist.all_reduce(sums)
    values = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    return {f"val_{k}": v for k, v in zip(LOSS_KEYS, values, strict=True)}


def main(args) -> int:
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    try:  # everything that can be wrong with the input is found before anything is written
        check_args(args)
        config = model_lib.config_from_args(args)
        device = cli.resolve_device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
        amp_dtype = cli.resolve_amp_dtype(args.amp, device)
        checkpoint, checkpoint_path = load_resume_checkpoint(args, config)
        data_kw = dict(seq_len=args.seq_len, image_size=args.image_size, sampling=args.sampling,
                       normalize=args.normalize, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
                       annotations_dir=args.annotations_dir, val_fraction=args.val_fraction, seed=args.seed)
        train_ds = IVFSequenceDataset(args.index_csv, split="train", augment=args.augment, **data_kw)
        val_ds = IVFSequenceDataset(args.index_csv, split="val", **data_kw) if args.val_fraction > 0 else None
        if args.use_classifier:
            for row in (r for ds in (train_ds, val_ds) if ds is not None for r in ds.rows):
                if row.label >= args.num_classes:
                    raise BadInput(f"{args.index_csv} line {row.line} ({row.cell_id}): label {row.label} is not "
                                   f"below --num_classes {args.num_classes}")
    except ValueError as err:  # BadInput, DataError and the config/device checks
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    stop = StopSignal()
    previous_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGUSR1)}
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    if rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        splits = [ds.metadata(i) for ds in (train_ds, val_ds) if ds is not None for i in range(len(ds))]
        save_atomic(lambda f: pd.DataFrame(splits).to_csv(f, index=False), log_dir / "split.csv")
    try:
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        raw_model = model_lib.ConvLSTMAutoencoder(config).to(device)
        torch.manual_seed(args.seed + rank)
        np.random.seed(args.seed + rank)
        random.seed(args.seed + rank)
        model = DistributedDataParallel(raw_model, device_ids=[local_rank] if device.type == "cuda" else None) \
            if world_size > 1 else raw_model
        if args.compile:
            compile_gate_updates(raw_model)
        loss_fn = AutoencoderLoss(args.l1_weight, args.ms_ssim_weight, args.smooth_weight,
                                  args.cls_weight if args.use_classifier else 0.0).to(device)

        loader_kw = dict(batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=device.type == "cuda",
                         persistent_workers=args.num_workers > 0, worker_init_fn=leave_process_group,
                         generator=torch.Generator().manual_seed(args.seed))
        sampler = ResumableSampler(train_ds, world_size, rank, args.seed)
        train_loader = DataLoader(train_ds, sampler=sampler, **loader_kw)
        val_loader = DataLoader(val_ds, sampler=list(range(rank, len(val_ds), world_size)), **loader_kw) \
            if val_ds is not None else None
        steps_per_epoch = math.ceil(len(sampler.inner) / args.batch_size)
        run = Run(args, device, amp_dtype, rank, world_size, steps_per_epoch, stop)

        optimizer = torch.optim.AdamW(raw_model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                      fused=True)  # one kernel for all parameters (CPU and CUDA)
        warmup, total = args.warmup_epochs * steps_per_epoch, max(args.num_epochs * steps_per_epoch, 1)

        def lr_factor(step):  # linear warm-up, then cosine decay to 0 at the last step
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        start_epoch, best, history, partial = 0, math.inf, [], None
        if checkpoint is not None:
            raw_model.load_state_dict(checkpoint["model_state_dict"])
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
            if scaler.is_enabled() and checkpoint["scaler_state_dict"]:
                scaler.load_state_dict(checkpoint["scaler_state_dict"])
            start_epoch, best = checkpoint["epoch"], checkpoint["best_val_loss"]
            partial = checkpoint.get("partial_epoch")
            states = checkpoint["rng_state"]
            if len(states) == world_size:
                set_rng_state(states[rank], device)
            elif partial is not None:  # another number of processes: the saved position no longer applies
                if run.is_main:
                    print(f"Checkpoint written by {len(states)} processes, now {world_size}: epoch "
                          f"{start_epoch + 1} restarts from its first step", flush=True)
                partial = None
            log_path = log_dir / "training_log.json"
            if log_path.is_file():
                history = [e for e in json.loads(log_path.read_text()) if e["epoch"] <= start_epoch]
            if run.is_main:
                where = f"epoch {start_epoch}" + (f", step {partial['step']}" if partial else "")
                ignored = f"; --resume_from {args.resume_from} ignored" if args.resume_from and \
                    checkpoint_path != Path(args.resume_from) else ""
                print(f"Resuming from {checkpoint_path} ({where}, global step {checkpoint['global_step']}{ignored})",
                      flush=True)
        if start_epoch >= args.num_epochs:
            if run.is_main:
                print(f"Training already finished ({start_epoch} of {args.num_epochs} epochs in {checkpoint_path}); "
                      f"raise --num_epochs to train longer", flush=True)
            return 0
        fixed_clip = (val_ds or train_ds)[0]["video"] if run.is_main else None

        def save(paths, epoch, losses, progress=None):
            """Every rank calls this (RNG states are gathered); rank 0 writes each path atomically."""
            states = [rng_state(device)]
            if world_size > 1:
                states = [None] * world_size
                dist.all_gather_object(states, rng_state(device))
            if run.is_main:
                state = {"model_state_dict": raw_model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                         "scheduler_state_dict": scheduler.state_dict(), "scaler_state_dict": scaler.state_dict(),
                         "epoch": epoch, "global_step": scheduler.last_epoch, "best_val_loss": best,
                         "losses": losses, "model_config": asdict(config), "args": vars(args), "rng_state": states,
                         "partial_epoch": None if progress is None  # the position inside an epoch
                         else {**vars(progress), "sums": progress.sums.tolist()}}
                for path in paths:
                    save_atomic(lambda f, s=state: torch.save(s, f), path)
            if world_size > 1:
                dist.barrier()  # nobody exits (and makes torchrun stop the others) before the files are written

        for epoch in range(start_epoch + 1, args.num_epochs + 1):
            progress = EpochProgress(0, torch.zeros(len(LOSS_KEYS), device=device)) if partial is None else \
                EpochProgress(**{**partial, "sums": torch.tensor(partial["sums"], device=device)})
            partial = None
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch, skip=progress.step * args.batch_size)
            if train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler, scaler, run, epoch, progress):
                means = dict(zip(LOSS_KEYS, (progress.sums / max(progress.step, 1)).tolist(), strict=True))
                save([save_dir / "last.pt"], epoch - 1, means, progress)
                if run.is_main:
                    print(f"{stop.received}: saved {save_dir / 'last.pt'} at epoch {epoch}, step {progress.step}; "
                          f"exit {EXIT_PREEMPTED}", flush=True)
                return EXIT_PREEMPTED
            start = time.perf_counter()
            sums = progress.sums.clone()
            if world_size > 1:
                dist.all_reduce(sums)
            entry = {"epoch": epoch, "lr": scheduler.get_last_lr()[0],
                     **dict(zip(LOSS_KEYS, (sums / (progress.step * world_size)).tolist(), strict=True))}
            entry.update(evaluate(raw_model, val_loader, loss_fn, run) if val_loader is not None
                         else {f"val_{k}": None for k in LOSS_KEYS})
            epoch_time = progress.time_s + time.perf_counter() - start
            entry.update(epoch_time_s=epoch_time, clips_per_s=progress.clips / max(progress.time_s, 1e-9),
                         global_step=scheduler.last_epoch)
            history.append(entry)
            score = entry["val_total"] if entry["val_total"] is not None else entry["total"]
            paths = [save_dir / "last.pt"]
            if epoch % args.save_every == 0 or epoch == args.num_epochs:
                paths.insert(0, save_dir / f"checkpoint_epoch_{epoch}.pt")
            if score < best:
                best = score
                paths.insert(0, save_dir / "best.pt")
            if run.is_main:
                save_atomic(lambda f: f.write(json.dumps(history, indent=1).encode()), log_dir / "training_log.json")
                save_reconstruction(raw_model, fixed_clip, log_dir / f"recon_epoch_{epoch}.png", run)
            save(paths, epoch, entry)  # last.pt last: when it says epoch N, every file of epoch N exists
            if run.is_main:
                val = f"{entry['val_total']:.4f}" if entry["val_total"] is not None else "-"
                print(f"epoch {epoch}/{args.num_epochs}  train {entry['total']:.4f}  val {val}  "
                      f"lr {entry['lr']:.2e}  {epoch_time:.1f} s  {entry['clips_per_s']:.1f} clips/s", flush=True)
            if run.stop_requested() and epoch < args.num_epochs:
                if run.is_main:
                    print(f"{stop.received}: saved {save_dir / 'last.pt'} after epoch {epoch}; "
                          f"exit {EXIT_PREEMPTED}", flush=True)
                return EXIT_PREEMPTED

        if world_size > 1:  # DDP keeps the replicas equal: check it once, at the end
            digests = [None] * world_size
            dist.all_gather_object(digests, weights_digest(raw_model.state_dict()))
            same = len(set(digests)) == 1
            if run.is_main:
                print(f"DDP: weights sha256 {digests[0][:16]} on ranks {list(range(world_size))}: "
                      f"{'identical' if same else 'DIFFERENT'}", flush=True)
            return 0 if same else 1
        return 0
    except NonFiniteLoss as err:
        print(f"train.py: error: {err}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    finally:
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
