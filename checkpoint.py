"""Checkpoints: save (serialised once, written atomically), load and validate, RNG state, the save_dir: its
lock, its guard against another run's files, what a resume may change, pruning, the training log on resume.

Every file goes through `cli.atomic_write`, so a crash or a full disk never leaves a half-written checkpoint
and the previous one stays. A checkpoint holds plain values only, so `torch.load(..., weights_only=True)`
reads it. No model code here.
"""

import hashlib
import io
import json
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from cli import (
    FLAG_ALIASES,
    LOSS_KEYS,
    LOSS_PARTS,
    TRAINING_LOG,
    InputError,
    NonFiniteError,
    WriteError,
    write_bytes,
)
from output_folder import FolderLock

# What a checkpoint must hold for training to continue from it; extraction needs the first two.
MODEL_KEYS = ("model_config", "model_state_dict")
RESUME_KEYS = MODEL_KEYS + ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
                            "global_step", "best_val_loss", "rng_state")
LOCK_FILE = ".train.lock"
EPOCH_FILE = re.compile(r"checkpoint_epoch_(\d+)\.pt")

# What a rerun may change against the checkpoint it continues, for every train.py flag: "refuse" changes what
# the run means (exit 2 naming the flag), "announce" is applied from here on with a line, "quiet" passes.
# Model flags are refused through model_config first. A flag missing here is refused (tests keep it complete).
# The loss parts' weights follow their row of cli.LOSS_PARTS.
RESUME_FLAGS = {
    **dict.fromkeys(("seq_len", "sampling", "normalize", "augment", "val_fraction", "seed", "batch_size",
                     "learning_rate", "weight_decay", "warmup_epochs", "grad_clip", "image_size", "encoder_hidden_dim",
                     "encoder_layers", "decoder_hidden_dim", "decoder_layers", "kernel_size", "peephole",
                     "use_classifier", "num_classes", "upsample", "mask_ratio", "predict_next", "init_state",
                     "contrast_temperature"), "refuse"),
    **{part.flag: part.resume for part in LOSS_PARTS},
    # num_epochs: the cosine schedule ends at the new last epoch; index_csv: the same recordings may be reached
    # by another path (a CHTC job's checkpoint continued on a workstation)
    **dict.fromkeys(("num_epochs", "amp", "index_csv"), "announce"),
    **dict.fromkeys(("num_workers", "log_every", "device", "cache_dir", "skip_bad", "annotations_dir", "save_every",
                     "keep_checkpoints", "compile", "save_dir", "log_dir", "resume_from"), "quiet"),
    # refused by dataset_ivf.check_clips_per_recording, which also knows that older checkpoints drew one clip
    "clips_per_recording": "quiet",
}


def add_checkpoint_args(group):
    """train.py's flags of where and what it saves, and what it continues from."""
    group.add_argument("--save_dir", type=str, default="checkpoints", help="checkpoint folder (default: %(default)s)")
    group.add_argument("--log_dir", type=str, default="logs",
                       help=f"folder for {TRAINING_LOG}, split.csv and recon PNGs (default: %(default)s)")
    group.add_argument("--save_every", type=int, default=5,
                       help="write checkpoint_epoch_<N>.pt every N epochs and at the end (default: %(default)s)")
    group.add_argument("--keep_checkpoints", type=int, default=2,
                       help="keep the K newest checkpoint_epoch_<N>.pt, 0 = none (default: %(default)s)")
    group.add_argument("--resume_from", type=str, default=None,
                       help="checkpoint to start from when save_dir has no last.pt yet; save_dir/last.pt, when "
                            "present, always wins so that rerunning a command continues it (default: %(default)s)")


def save_checkpoint(state: dict, paths: list[Path]):
    """Serialise state once, then write the same bytes atomically to each path (in the given order)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    for path in paths:
        write_bytes(path, data)


def load_checkpoint(path: Path, required: tuple[str, ...] = MODEL_KEYS) -> dict:
    """A checkpoint dict read with weights_only=True and checked: it holds `required` and finite weights.
    Anything else is an InputError naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found; pass a .pt file written by train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: say which, whatever the unpickler raised
        raise InputError(f"{path}: cannot read checkpoint ({type(err).__name__}); use best.pt or last.pt "
                         f"written by train.py, or move this file away") from None
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path}: not a train.py checkpoint (a {type(checkpoint).__name__}, not a dict)")
    missing = [k for k in required if k not in checkpoint]
    if missing:
        raise InputError(f"{path}: not a complete train.py checkpoint (missing {', '.join(missing)})")
    weights = checkpoint["model_state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{path}: model_state_dict is not a dict of tensors")
    bad = [name for name, value in weights.items() if value.is_floating_point() and not value.isfinite().all()]
    if bad:
        raise InputError(f"{path}: non-finite weights in {bad[0]}" + (f" and {len(bad) - 1} more" if bad[1:] else "")
                         + "; use an earlier checkpoint")
    return checkpoint


def find_resume_checkpoint(save_dir, resume_from, model_config: dict, args: dict, model_defaults: dict
                           ) -> tuple[dict | None, Path | None, list[str]]:
    """The checkpoint to continue from, checked against the flags (see changed_flags), and the lines announcing
    the changes applied: save_dir/last.pt when it exists (so that the same command continues after a
    preemption), else --resume_from. A model_config field that the checkpoint predates counts as its default
    (model_defaults), which is what earlier versions built."""
    path = Path(save_dir) / "last.pt"
    if not path.is_file():
        if not resume_from:
            return None, None, []
        path = Path(resume_from)
        if path.is_dir():
            raise InputError(f"--resume_from {path} is a folder; pass a checkpoint in it, such as {path / 'last.pt'}")
        if not path.is_file():
            raise InputError(f"--resume_from {path}: file not found")
    checkpoint = load_checkpoint(path, RESUME_KEYS)
    saved = json.loads(json.dumps({**model_defaults, **checkpoint["model_config"]}))
    wanted = json.loads(json.dumps(model_config))
    diff = [f"{k}={saved.get(k)} in the checkpoint, {wanted.get(k)} from the flags"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if diff:
        raise InputError(f"{path} has another model config ({'; '.join(diff)}); pass the same model flags "
                             f"or use a new --save_dir")
    return checkpoint, path, changed_flags(checkpoint.get("args") or {}, args, path)


def restore(checkpoint: dict, model, optimizer, scheduler, scaler, rank: int, world_size: int,
            device: torch.device) -> dict | None:
    """Load a resume checkpoint's weights, optimizer, schedule, (when both use one) AMP scaler state and this rank's
    RNG states; returns the position inside the interrupted epoch (partial_epoch), None when there is none or when
    another number of processes wrote it (that epoch then restarts, with a line)."""
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    if scaler.is_enabled() and checkpoint["scaler_state_dict"]:
        scaler.load_state_dict(checkpoint["scaler_state_dict"])
    partial, states = checkpoint.get("partial_epoch"), checkpoint["rng_state"]
    if len(states) == world_size:
        set_rng_state(states[rank], device)
    elif partial is not None:  # another number of processes: the saved position no longer applies
        if rank == 0:
            print(f"Checkpoint written by {len(states)} processes, now {world_size}: epoch "
                  f"{checkpoint['epoch'] + 1} restarts from its first step", flush=True)
        partial = None
    return partial


def epoch_paths(save_dir: Path, epoch: int, best: bool, save_every: int, num_epochs: int, keep: int) -> list[Path]:
    """The files an epoch's checkpoint goes to, last.pt last (when it says epoch N, every file of epoch N exists):
    best.pt on a new best, checkpoint_epoch_<N>.pt every save_every epochs and at the end (when any is kept)."""
    paths = [save_dir / "last.pt"]
    if (epoch % save_every == 0 or epoch == num_epochs) and keep > 0:
        paths.insert(0, save_dir / f"checkpoint_epoch_{epoch}.pt")
    if best:
        paths.insert(0, save_dir / "best.pt")
    return paths


def check_save_dir(save_dir):
    """Refuse a save_dir that holds another run's results (best.pt or checkpoint_epoch_*.pt without last.pt;
    a run of train.py writes last.pt before any other file) or a last.pt that is not a file."""
    save_dir, last = Path(save_dir), Path(save_dir) / "last.pt"
    if last.exists() and not last.is_file():
        raise InputError(f"{last} is not a file; move it away or choose another --save_dir")
    if not last.exists() and save_dir.is_dir():
        others = sorted(p.name for p in save_dir.iterdir() if p.name == "best.pt" or EPOCH_FILE.fullmatch(p.name))
        if others:
            raise InputError(f"{save_dir} holds another run's results ({', '.join(others[:3])}) but no last.pt to "
                             f"continue from; choose a new --save_dir or move those files away")


def changed_flags(saved: dict, args: dict, path: Path) -> list[str]:
    """Lines announcing the flags changed since the checkpoint was written (RESUME_FLAGS "announce"); an
    InputError naming every changed flag that would change what the run means."""
    def canonical(key, value):  # an old name of a choice (--normalize minmax01) is the same choice
        return FLAG_ALIASES.get(key, {}).get(value, value)

    changed = {k: (saved[k], v) for k, v in args.items() if k in saved and canonical(k, saved[k]) != canonical(k, v)}
    refused = [f"--{k} {old} (now {new})" for k, (old, new) in changed.items()
               if RESUME_FLAGS.get(k, "refuse") == "refuse"
               or (k == "compile" and "step" in (old, new))]  # step drops short batches: another epoch length
    if refused:
        raise InputError(f"{path} was trained with {', '.join(refused)}; rerun with the checkpoint's value"
                         f"{'s' if refused[1:] else ''}, or start a new run in a new --save_dir")
    return [f"--{k} changed from {old} to {new} since {path}: applied from here on"
            for k, (old, new) in changed.items() if RESUME_FLAGS.get(k) == "announce"]


def require_finite_weights(state_dict: dict, where: str, save_dir):
    """Raise NonFiniteError instead of letting non-finite weights reach a checkpoint."""
    if not weights_finite(state_dict):
        raise NonFiniteError(f"non-finite weights {where}; stopped without saving them, the last good checkpoint "
                             f"in {save_dir} is kept (try a lower --learning_rate or --amp off)")


def require_finite_losses(losses: dict, where: str, save_dir) -> dict:
    """losses (None values allowed), or NonFiniteError naming the first NaN or infinite one."""
    bad = [k for k, v in losses.items() if v is not None and not np.isfinite(v)]
    if bad:
        raise NonFiniteError(f"non-finite {bad[0]} ({losses[bad[0]]}) {where}; stopped, the last good checkpoint "
                             f"in {save_dir} is kept (try a lower --learning_rate or --amp off)")
    return losses


def require_finite_steps(bad_step: torch.Tensor, epoch: int, steps_per_epoch: int, world_size: int, save_dir):
    """NonFiniteError if any rank saw a non-finite loss this epoch (bad_step: the first such step, -1 for none,
    kept on the device so that the steps need no host sync); a collective call under DDP."""
    if world_size > 1:
        bad_step = bad_step.clone()
        torch.distributed.all_reduce(bad_step, op=torch.distributed.ReduceOp.MAX)
    step = int(bad_step.item())
    if step >= 0:
        raise NonFiniteError(f"non-finite loss at epoch {epoch}, step {step + 1} of {steps_per_epoch}; stopped, the "
                             f"last good checkpoint in {save_dir} is kept (try a lower --learning_rate or --amp off)")


def prune_checkpoints(save_dir, keep: int):
    """Delete all but the `keep` newest checkpoint_epoch_<N>.pt (called after the newest is written)."""
    found = sorted((int(m.group(1)), p) for p in Path(save_dir).iterdir() if (m := EPOCH_FILE.fullmatch(p.name)))
    for _, path in found[:max(len(found) - keep, 0)]:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise WriteError(path, err) from None


def load_history(log_dir, checkpoint: dict) -> list[dict]:
    """The training log's entries up to the checkpoint's epoch. An unreadable log is moved aside to
    training_log.json.bad and rebuilt from what the checkpoint knows (its own epoch's entry), with a line."""
    path, epoch = Path(log_dir) / TRAINING_LOG, checkpoint["epoch"]
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "epoch" in e for e in entries):
            raise ValueError("not a list of epochs")
        return [e for e in entries if e["epoch"] <= epoch]
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # json's JSONDecodeError is a ValueError
        bad = path.with_name(path.name + ".bad")
        try:
            os.replace(path, bad)
        except OSError as e:
            raise WriteError(bad, e) from None
        entry = checkpoint.get("losses") or {}
        history = [entry] if entry.get("epoch") == epoch and checkpoint.get("partial_epoch") is None else []
        print(f"{path} was unreadable ({type(err).__name__}); moved to {bad.name}, the log goes on from "
              f"{f'epoch {epoch}' if history else 'the next epoch'}", file=sys.stderr, flush=True)
        return history


def weights_finite(state_dict: dict) -> bool:
    """True when every floating-point tensor of a state dict is finite (one host sync)."""
    flags = [v.isfinite().all() for v in state_dict.values() if v.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def replicas_identical(state_dict: dict, world_size: int, is_main: bool) -> bool:
    """Whether every rank has the same weights (sha256, printed by rank 0); a collective call under DDP, True
    for one process."""
    if world_size == 1:
        return True
    digests = [None] * world_size
    torch.distributed.all_gather_object(digests, weights_digest(state_dict))
    same = len(set(digests)) == 1
    if is_main:
        print(f"DDP: weights sha256 {digests[0][:16]} on ranks {list(range(world_size))}: "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)
    return same


def partial_sums(partial: dict | None) -> dict[str, float]:
    """The running loss sums of a mid-epoch checkpoint's partial_epoch by log key ({} for none). Older checkpoints
    hold a list in cli.LOSS_KEYS' order, without the parts added since."""
    sums = {} if partial is None else partial["sums"]
    return dict(zip(LOSS_KEYS, sums, strict=False)) if isinstance(sums, list) else sums


def gather_rng_states(device: torch.device, world_size: int) -> list[dict]:
    """Every rank's RNG states (a collective call when world_size > 1)."""
    if world_size == 1:
        return [rng_state(device)]
    states = [None] * world_size
    torch.distributed.all_gather_object(states, rng_state(device))
    return states


def weights_digest(state_dict: dict) -> str:
    """sha256 over the names and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


class RunLock(FolderLock):
    """The save_dir's lock (FolderLock on save_dir/.train.lock), which also refuses another run's files and a
    last.pt that another run wrote while this one started."""

    def __init__(self, save_dir: Path):
        super().__init__(Path(save_dir) / LOCK_FILE, Path(save_dir), "a running training", "--save_dir")
        self.seen = None

    def check(self) -> "RunLock":
        """Before the input is known good (writes nothing): refuse another run's files (check_save_dir) and a
        live run's lock early, and note last.pt's time, so that __enter__ sees a run that wrote it meanwhile."""
        check_save_dir(self.folder)
        super().check()
        self.seen = _mtime(self.folder / "last.pt")
        return self

    def locked(self):
        if _mtime(self.folder / "last.pt") != self.seen:
            raise InputError(f"{self.folder / 'last.pt'} was written by another run while this one started; "
                             f"run the command again")
