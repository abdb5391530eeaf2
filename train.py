"""Train the ConvLSTM autoencoder on embryo time-lapse clips: CPU, one GPU, or several with torchrun.

    python train.py --index_csv data/index.csv --num_epochs 50
    torchrun --standalone --nproc_per_node 4 train.py --index_csv data/index.csv

Running the same command again continues from save_dir/last.pt (checkpoint.RESUME_FLAGS: what a rerun may
change). Exit codes: cli.py's table (DESIGN.md); a stop signal saves last.pt first, at any point (85; Ctrl-C 130, a
second Ctrl-C ends at once), and loader workers are out of reach of signals to the process group. On the CPU
with a fixed seed, a run killed at any point and resumed ends with the same weights, bit for bit, as an
uninterrupted run; on CUDA, cuDNN algorithm choice makes runs close, not equal.
"""

import argparse
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoint as ckpt
import cli
import dataset_ivf
import model as model_lib
from cli import LOSS_KEYS
from latent_figures import log_to_tensorboard, plot_training_curves, tensorboard_writer, write_reconstruction_strip
from losses import AutoencoderLoss


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="train.py", description="Train the ConvLSTM autoencoder on index.csv clips.")
    model_lib.add_model_args(parser)
    dataset_ivf.add_data_args(parser)
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=8, help="clips per step and process (default: %(default)s)")
    g.add_argument("--num_epochs", type=int, default=50, help="epochs to train (default: %(default)s)")
    g.add_argument("--learning_rate", type=float, default=3e-4, help="AdamW peak learning rate (default: %(default)s)")
    g.add_argument("--weight_decay", type=float, default=1e-5, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--warmup_epochs", type=float, default=2,
                   help="linear warm-up epochs before the cosine decay, fractions allowed; an epoch is "
                        "--clips_per_recording clips per recording, and the run plan line gives it in steps "
                        "(default: %(default)s)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: %(default)s)")
    g.add_argument("--mask_ratio", type=float, default=0.0,
                   help="blank this fraction of each training clip's frames (never the first) in the input; the "
                        "loss still asks for every frame, so the recurrent state must carry it (default: %(default)s)")
    cli.add_loss_args(g)
    ckpt.add_checkpoint_args(g)
    cli.add_seed_arg(g)
    cli.add_device_args(g, compile=True)
    g.add_argument("--log_every", type=int, default=10,
                   help="update the progress bar and check the loss every N steps (default: %(default)s)")
    return parser


@dataclass
class Run:
    """What the loop needs about this process."""

    args: argparse.Namespace
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int
    world_size: int
    local_rank: int
    stop: cli.StopSignal
    steps_per_epoch: int = 0
    warmup_steps: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
    sums: torch.Tensor  # (len(LOSS_KEYS),) running sums of the per-step losses, in LOSS_KEYS order
    clips: int = 0
    time_s: float = 0.0


@dataclass
class Trainer:
    """Everything a run trains, evaluates and saves."""

    run: Run
    config: model_lib.ModelConfig
    data_config: dataset_ivf.DataConfig
    train_ds: dataset_ivf.IVFSequenceDataset
    val_ds: dataset_ivf.IVFSequenceDataset | None
    raw_model: torch.nn.Module
    model: torch.nn.Module  # raw_model, or its DDP wrapper
    loss_fn: AutoencoderLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DataLoader  # its sampler: a dataset_ivf.ResumableSampler
    val_loader: DataLoader | None
    start_epoch: int = 0
    best: float = math.inf
    history: list | None = None
    partial: dict | None = None  # position inside the interrupted epoch, from a mid-epoch last.pt
    writer: object | None = None  # TensorBoard SummaryWriter (rank 0, when tensorboard is installed)
    forward: Callable = model_lib.forward_loss  # model and loss of a step; compiled with --compile step


def check_args(args, writes: bool = True):
    """Flag values that argparse cannot check (train.py, and verify_data_connection.py with writes=False: it writes
    no checkpoint or log); raises cli.InputError."""
    weights = ("weight_decay", "grad_clip", *cli.LOSS_WEIGHT_FLAGS)
    above = ("learning_rate", "contrast_temperature")
    cli.check_numbers(args, above=above, finite=("val_fraction", "warmup_epochs", "mask_ratio", *above, *weights),
                      at_least={
        **dict.fromkeys(("batch_size", "num_epochs", "save_every", "log_every", "seq_len"), 1),
        **dict.fromkeys(("warmup_epochs", "keep_checkpoints", *weights), 0)})
    cli.check_seed(args.seed)
    cli.check_loss_weights(args)
    if not 0 <= args.mask_ratio < 1:
        raise cli.InputError(f"--mask_ratio must be in [0, 1), got {args.mask_ratio}")
    if (args.predict_next or args.time_gap_weight > 0) and args.seq_len < 2:  # a head would get no gradient
        raise cli.InputError(f"--predict_next and --time_gap_weight read two frames of a clip: need --seq_len 2 or "
                             f"more, got {args.seq_len}")
    if args.phase_weight > 0 and not args.annotations_dir:
        raise cli.InputError("--phase_weight trains on the annotated phases: pass --annotations_dir")
    if args.warmup_epochs > args.num_epochs:
        raise cli.InputError(f"--warmup_epochs {args.warmup_epochs} is longer than the run (--num_epochs "
                             f"{args.num_epochs}): the learning rate would never reach its peak; lower it")
    for flag in ("save_dir", "log_dir") if writes else ():
        cli.check_writable(f"--{flag}", getattr(args, flag))


def prepare(args, run: "Run", writes: bool = True) -> tuple[model_lib.ModelConfig, dataset_ivf.DataConfig]:
    """The checks before a run writes anything (train.py; verify_data_connection.py with writes=False): the flags,
    the model and data configs, the device and its autocast dtype (set on run); raises cli.InputError."""
    check_args(args, writes)
    config, data_config = model_lib.config_from_args(args), dataset_ivf.DataConfig.from_args(args)
    if run.device.type == "cuda":
        run.device = torch.device("cuda", run.local_rank)
    run.amp_dtype = cli.resolve_amp_dtype(args.amp, run.device)
    return config, data_config


def load_datasets(args, data_config: dataset_ivf.DataConfig, stop=None) -> tuple:
    """The train and val datasets of index.csv, their labels checked against --num_classes with the classifier."""
    num_classes = args.num_classes if args.use_classifier else None
    return dataset_ivf.train_val_datasets(args.index_csv, data_config, stop, num_classes)


def lr_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to 0 at the last step."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_up(args, run: Run, config, data_config, train_ds, val_ds) -> Trainer:
    """Model (same initial weights on every rank), loss, loaders, optimizer, schedule and scaler."""
    torch.manual_seed(args.seed)
    raw_model = model_lib.ConvLSTMAutoencoder(config).to(run.device)
    torch.manual_seed(args.seed + run.rank)
    np.random.seed((args.seed + run.rank) % 2**32)
    random.seed(args.seed + run.rank)
    model = raw_model
    if run.world_size > 1:
        model = DistributedDataParallel(raw_model, device_ids=[run.local_rank] if run.device.type == "cuda" else None)
    forward = model_lib.training_forward(raw_model, args.compile, run.device)
    loss_fn = AutoencoderLoss.from_args(args, config).to(run.device)
    train_loader, val_loader = dataset_ivf.make_loaders(  # --compile step: full batches, one graph
        train_ds, val_ds, args.batch_size, cli.resolve_num_workers(args.num_workers, run.device.type), run.world_size,
        run.rank, args.seed, pin_memory=run.device.type == "cuda", drop_last=args.compile == "step")
    run.steps_per_epoch = len(train_loader)  # batches of a whole epoch (sampler.skip is 0 here)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=True)  # one kernel for all parameters (CPU and CUDA)
    run.warmup_steps = round(args.warmup_epochs * run.steps_per_epoch)
    scheduler = lr_schedule(optimizer, run.warmup_steps, args.num_epochs * run.steps_per_epoch)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
    return Trainer(run, config, data_config, train_ds, val_ds, raw_model, model, loss_fn, optimizer, scheduler,
                   scaler, train_loader, val_loader, history=[], forward=forward,
                   writer=tensorboard_writer(Path(args.log_dir)) if run.is_main else None)


def resume(t: Trainer, checkpoint: dict, path: Path, notes: list[str]):
    """Load weights, optimizer, schedule, scaler and RNG states; keep the log entries up to that epoch."""
    run = t.run
    t.partial = ckpt.restore(checkpoint, t.raw_model, t.optimizer, t.scheduler, t.scaler, run.rank, run.world_size,
                             run.device)
    t.start_epoch, t.best = checkpoint["epoch"], checkpoint["best_val_loss"]
    if run.is_main:  # only rank 0 writes the log
        t.history = ckpt.load_history(run.args.log_dir, checkpoint)
        where = f"epoch {t.start_epoch}" + (f", step {t.partial['step']}" if t.partial else "")
        resume_from = run.args.resume_from
        ignored = f"; --resume_from {resume_from} ignored" if resume_from and path != Path(resume_from) else ""
        print("\n".join([f"Resuming from {path} ({where}, global step {checkpoint['global_step']}{ignored})", *notes]),
              flush=True)


def train_step(model, batch: dict, loss_fn, optimizer, scaler, amp_dtype, grad_clip: float,
               forward=model_lib.forward_loss, mask_ratio: float = 0.0) -> dict:
    """One optimisation step on a batch dict (tensors on the device): forward (model_lib.forward_loss, maybe
    compiled) with mask_ratio of the clips' frames blanked in the input, the loss against every frame; scaled
    backward, clipping, optimizer step; no host sync unless fp16's scaler checks for inf. Returns the loss parts
    (fp32 scalars on the device). bench.py times this very function."""
    if mask_ratio > 0:
        batch = {**batch, "input": model_lib.mask_frames(batch["video"], mask_ratio)}  # (B, T, 1, H, W)
    parts = forward(model, loss_fn, batch, amp_dtype)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(parts["total"]).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return parts


def train_one_epoch(t: Trainer, epoch: int, progress: EpochProgress) -> bool:
    """Train over the loader from progress.step on; returns True when a stop signal cut the epoch short."""
    run, args = t.run, t.run.args
    t.model.train()
    bad_step = torch.full((), -1, dtype=torch.long, device=run.device)
    bar = tqdm(t.train_loader, desc=f"epoch {epoch}/{args.num_epochs}", initial=progress.step,
               total=run.steps_per_epoch, disable=None if run.is_main else True, dynamic_ncols=True, leave=False)
    start, stop = time.perf_counter(), False
    for batch in bar:
        batch = model_lib.to_device(batch, run.device)  # video (B, T, 1, H, W), label (B,), ...
        parts = train_step(t.model, batch, t.loss_fn, t.optimizer, t.scaler, run.amp_dtype, args.grad_clip,
                           t.forward, args.mask_ratio)
        t.scheduler.step()
        losses = torch.stack([parts[k].detach().float() for k in LOSS_KEYS])  # stays on device: no sync
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(losses).all(), progress.step, bad_step)
        progress.sums += losses
        progress.step += 1
        progress.clips += batch["video"].shape[0] * run.world_size
        log_point = progress.step % args.log_every == 0
        # one process: a flag check each step; DDP: all ranks agree at log points (no per-step host sync)
        stop = run.stop_requested() if run.world_size == 1 or log_point else False
        if stop or log_point:
            ckpt.require_finite_steps(bad_step, epoch, run.steps_per_epoch, run.world_size, args.save_dir)
            means = (progress.sums / progress.step).tolist()
            bar.set_postfix({k: f"{v:.4f}" for k, v in zip(LOSS_KEYS[:4], means[:4], strict=True)}, refresh=False)
        if stop:
            break
    bar.close()
    ckpt.require_finite_steps(bad_step, epoch, run.steps_per_epoch, run.world_size, args.save_dir)
    progress.time_s += time.perf_counter() - start
    return stop and progress.step < run.steps_per_epoch


@torch.no_grad()
def evaluate(t: Trainer) -> dict | None:
    """Mean validation losses over all ranks, keys prefixed with val_; None when a stop signal came first."""
    run, args = t.run, t.run.args
    t.raw_model.eval()
    sums = torch.zeros(len(LOSS_KEYS) + 1, device=run.device)  # clip-weighted sums, then the clip count
    common = math.ceil(len(t.val_ds) // run.world_size / args.batch_size)  # batches every rank has
    for i, batch in enumerate(t.val_loader):
        if i < common and (run.world_size == 1 or i % args.log_every == 0) and run.stop_requested():
            return None
        batch = model_lib.to_device(batch, run.device)  # video (B, T, 1, H, W), label (B,), ...
        parts = model_lib.forward_loss(t.raw_model, t.loss_fn, batch, run.amp_dtype)
        clips = batch["video"].shape[0]
        sums[:-1] += torch.stack([parts[k].float() for k in LOSS_KEYS]) * clips
        sums[-1] += clips
    if run.world_size > 1:
        dist.all_reduce(sums)
    values = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    return {f"val_{k}": v for k, v in zip(LOSS_KEYS, values, strict=True)}


def save(t: Trainer, paths: list[Path], epoch: int, losses: dict, progress: EpochProgress | None = None):
    """Every rank calls this (RNG states are gathered); rank 0 serialises once and writes each path.
    Non-finite weights are never written (cli.NonFiniteError on every rank)."""
    run = t.run
    where = f"at epoch {epoch + 1}, step {progress.step}" if progress is not None else f"after epoch {epoch}"
    ckpt.require_finite_weights(t.raw_model.state_dict(), where, run.args.save_dir)
    states = ckpt.gather_rng_states(run.device, run.world_size)
    if run.is_main:
        ckpt.save_checkpoint({
            "model_state_dict": t.raw_model.state_dict(), "optimizer_state_dict": t.optimizer.state_dict(),
            "scheduler_state_dict": t.scheduler.state_dict(), "scaler_state_dict": t.scaler.state_dict(),
            "epoch": epoch, "global_step": t.scheduler.last_epoch, "best_val_loss": t.best, "losses": losses,
            "model_config": asdict(t.config), "data_config": t.data_config.to_dict(), "args": vars(run.args),
            "split": dataset_ivf.run_split(t.train_ds, t.val_ds),  # what extraction labels each row with
            "rng_state": states,
            "partial_epoch": None if progress is None else
            {**vars(progress), "sums": dict(zip(LOSS_KEYS, progress.sums.tolist(), strict=True))},
        }, paths)
    if run.world_size > 1:
        dist.barrier()  # nobody exits (and makes torchrun stop the others) before the files are written


def end_of_epoch(t: Trainer, epoch: int, progress: EpochProgress) -> dict | None:
    """Validate, log, write the PNG and the checkpoints of a finished epoch; returns the log entry, or None
    when a stop signal came during validation (nothing written)."""
    run, args = t.run, t.run.args
    start = time.perf_counter()
    sums = progress.sums.clone()
    if run.world_size > 1:
        dist.all_reduce(sums)
    entry = {"epoch": epoch, "lr": t.scheduler.get_last_lr()[0],
             **dict(zip(LOSS_KEYS, (sums / (progress.step * run.world_size)).tolist(), strict=True))}
    ckpt.require_finite_weights(t.raw_model.state_dict(), f"after epoch {epoch}", args.save_dir)
    val = evaluate(t) if t.val_loader is not None else {f"val_{k}": None for k in LOSS_KEYS}
    if val is None:
        return None
    entry.update(ckpt.require_finite_losses(val, f"at epoch {epoch}", args.save_dir))
    epoch_time = progress.time_s + time.perf_counter() - start
    entry.update(epoch_time_s=epoch_time, clips_per_s=progress.clips / max(progress.time_s, 1e-9),
                 global_step=t.scheduler.last_epoch)
    t.history.append(entry)
    score = entry["val_total"] if entry["val_total"] is not None else entry["total"]
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    paths = ckpt.epoch_paths(save_dir, epoch, score < t.best, args.save_every, args.num_epochs, args.keep_checkpoints)
    t.best = min(t.best, score)
    if run.is_main:
        cli.write_json(log_dir / cli.TRAINING_LOG, t.history)
        plot_training_curves(t.history, log_dir / cli.TRAINING_CURVES)
        clip = (t.val_ds or t.train_ds)[0]["video"]  # (T, 1, H, W), the same each epoch
        recon = model_lib.reconstruct(t.raw_model, clip.to(run.device), run.amp_dtype).cpu()  # (T, 1, H, W)
        image = write_reconstruction_strip(clip[:, 0].numpy(), recon[:, 0].numpy(), log_dir / cli.RECON_PNG.format(
            epoch=epoch))
        log_to_tensorboard(t.writer, entry, image, epoch)
    save(t, paths, epoch, entry)  # last.pt last: when it says epoch N, every file of epoch N exists
    if run.is_main:
        ckpt.prune_checkpoints(save_dir, args.keep_checkpoints)  # only once the new one is written
        val = f"{entry['val_total']:.4f}" if entry["val_total"] is not None else "-"
        print(f"epoch {epoch}/{args.num_epochs}  train {entry['total']:.4f}  val {val}  "
              f"lr {entry['lr']:.2e}  {epoch_time:.1f} s  {entry['clips_per_s']:.1f} clips/s", flush=True)
    return entry


def save_stopped(t: Trainer, epoch: int, progress: EpochProgress) -> int:
    """After a stop signal inside epoch `epoch` (training or validation): last.pt with the position; exit 85 (130)."""
    run, save_dir = t.run, Path(t.run.args.save_dir)
    means = dict(zip(LOSS_KEYS, (progress.sums / max(progress.step, 1)).tolist(), strict=True))
    save(t, [save_dir / "last.pt"], epoch - 1, means, progress)
    return run.stop.end(f"saved {save_dir / 'last.pt'} at epoch {epoch}, step {progress.step}", run.is_main)


def fit(t: Trainer) -> int:
    """Train from t.start_epoch to --num_epochs; returns the exit code."""
    run, args = t.run, t.run.args
    save_dir = Path(args.save_dir)
    for epoch in range(t.start_epoch + 1, args.num_epochs + 1):
        sums = torch.tensor([ckpt.partial_sums(t.partial).get(k, 0.0) for k in LOSS_KEYS], device=run.device)
        progress = EpochProgress(**{**(t.partial or {"step": 0}), "sums": sums})
        t.partial = None
        t.train_ds.set_epoch(epoch)
        t.train_loader.sampler.set_epoch(epoch, skip=progress.step * args.batch_size)
        if train_one_epoch(t, epoch, progress) or end_of_epoch(t, epoch, progress) is None:
            return save_stopped(t, epoch, progress)
        if run.stop_requested() and epoch < args.num_epochs:
            return run.stop.end(f"saved {save_dir / 'last.pt'} after epoch {epoch}", run.is_main)
    same = ckpt.replicas_identical(t.raw_model.state_dict(), run.world_size, run.is_main)  # DDP: checked once
    return cli.EXIT_OK if same else 1


def train(args, run: Run) -> int:
    """Check everything, then take the save_dir and train. Nothing is written before the input is known good."""
    config, data_config = prepare(args, run)
    lock = ckpt.RunLock(args.save_dir).check() if run.is_main else contextlib.nullcontext()  # rank 0 holds it
    checkpoint, path, notes = ckpt.find_resume_checkpoint(args.save_dir, args.resume_from, asdict(config), vars(args),
                                                        asdict(model_lib.ModelConfig()))
    datasets = load_datasets(args, data_config, run.stop)
    dataset_ivf.check_clips_per_recording(checkpoint, path, datasets[0])
    if args.compile == "step" and len(datasets[0]) < args.batch_size * run.world_size:
        raise cli.InputError(f"--compile step trains on full batches only: {len(datasets[0])} training clips are "
                             f"fewer than --batch_size {args.batch_size} x {run.world_size} processes; lower "
                             f"--batch_size")
    with lock:
        return train_locked(args, run, config, data_config, datasets, checkpoint, path, notes)


def train_locked(args, run: Run, config, data_config, datasets, checkpoint, path, notes) -> int:
    """Set up, resume (or write the initial last.pt) and fit, holding the save_dir."""
    if run.world_size > 1:
        if run.device.type == "cuda":
            torch.cuda.set_device(run.device)
        dist.init_process_group("nccl" if run.device.type == "cuda" else "gloo")
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    train_ds, val_ds = datasets
    last, log_dir = Path(args.save_dir) / "last.pt", Path(args.log_dir)
    if run.is_main:
        log_dir.mkdir(parents=True, exist_ok=True)
        dataset_ivf.write_split_csv(log_dir / "split.csv", train_ds, val_ds)
    t = set_up(args, run, config, data_config, train_ds, val_ds)
    if checkpoint is not None:
        resume(t, checkpoint, path, notes)
    if run.stop_requested():
        return run.stop.end("nothing trained yet (it came during setup), " + (
            f"{path} is unchanged" if checkpoint else "nothing to save"), run.is_main)
    # last.pt comes before any other file of a run (checkpoint.check_save_dir relies on it)
    if checkpoint is None:
        save(t, [last], 0, {})
    elif run.is_main and not last.is_file():
        ckpt.save_checkpoint(checkpoint, [last])
    if t.start_epoch >= args.num_epochs:
        if run.is_main:
            print(f"Training already finished ({t.start_epoch} of {args.num_epochs} epochs in {path}); "
                  f"raise --num_epochs to train longer", flush=True)
        return cli.EXIT_OK
    if run.is_main:
        print(dataset_ivf.run_plan(train_ds, val_ds, run.steps_per_epoch, args.batch_size, run.world_size,
                                   args.num_epochs, run.warmup_steps, t.train_loader.num_workers), flush=True)
    return fit(t)


def main(args) -> int:
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        with cli.stop_signals(cli.StopSignal()) as stop:
            run = Run(args, cli.resolve_device(args.device), None, rank, world_size,
                      int(os.environ.get("LOCAL_RANK", 0)), stop)
            return train(args, run)
    except cli.Stopped as stopped:  # a stop signal, not an error
        print(stopped, flush=True)
        return stopped.exit_code
    except cli.ScriptError as err:
        print(f"train.py: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C after a stop signal: at once, files on disk as last saved
        print(f"train.py: SIGINT again: stopped at once; exit {cli.EXIT_INTERRUPTED}", file=sys.stderr, flush=True)
        return cli.EXIT_INTERRUPTED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
