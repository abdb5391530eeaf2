"""Checkpoints: save (serialised once, written atomically), load and validate, RNG state, the save_dir lock.

Every file goes through `cli.atomic_write`, so a crash or a full disk never leaves a half-written checkpoint
and the previous one stays. A checkpoint holds plain values only, so `torch.load(..., weights_only=True)`
reads it. No model code here.
"""

import fcntl
import hashlib
import io
import json
import os
import random
import socket
import sys
from pathlib import Path

import numpy as np
import torch

from cli import InputError, write_bytes

# What a checkpoint must hold for training to continue from it; extraction needs the first two.
MODEL_KEYS = ("model_config", "model_state_dict")
RESUME_KEYS = MODEL_KEYS + ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict", "epoch",
                            "global_step", "best_val_loss", "rng_state")
LOCK_FILE = ".train.lock"


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


def find_resume_checkpoint(save_dir, resume_from, model_config: dict) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, checked against the flags: save_dir/last.pt when it exists
    (so that the same command continues after a preemption), else --resume_from."""
    path = Path(save_dir) / "last.pt"
    if not path.is_file():
        if not resume_from:
            return None, None
        path = Path(resume_from)
        if not path.is_file():
            raise InputError(f"--resume_from {path}: file not found")
    checkpoint = load_checkpoint(path, RESUME_KEYS)
    saved = json.loads(json.dumps(checkpoint["model_config"]))
    wanted = json.loads(json.dumps(model_config))
    diff = [f"{k}={saved.get(k)} in the checkpoint, {wanted.get(k)} from the flags"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if diff:
        raise InputError(f"{path} has another model config ({'; '.join(diff)}); pass the same model flags "
                             f"or use a new --save_dir")
    return checkpoint, path


def weights_finite(state_dict: dict) -> bool:
    """True when every floating-point tensor of a state dict is finite (one host sync)."""
    flags = [v.isfinite().all() for v in state_dict.values() if v.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


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


class RunLock:
    """An exclusive lock on a save_dir, held while a run lives. The kernel releases it when the process
    dies, so a killed run's lock is taken over (with a line); a live run's lock is an InputError."""

    def __init__(self, save_dir: Path):
        self.path = Path(save_dir) / LOCK_FILE
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            owner = self.file.read().strip() or "another process"
            self.file.close()
            raise InputError(f"{self.path.parent} is in use by a running training ({owner}); wait for it to end "
                             f"or choose another --save_dir") from None
        self.file.seek(0)
        previous = self.file.read().strip()
        if previous:
            print(f"Taking over {self.path} left by a run that ended without releasing it ({previous})",
                  file=sys.stderr, flush=True)
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.truncate(0)
        self.file.close()
