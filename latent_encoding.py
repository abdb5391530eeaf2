"""Run a trained encoder over recordings: the autocast it trained with, latents pooled over space, whole
recordings encoded side by side in chunks with the state carried over, or interleaved so the state steps as it
did in training, and the two controls every probe is reported against (an untrained model, raw pixels).
Used by extract_latents.py and bench.py."""
import numpy as np
import torch
import torch.nn.functional as F

import cli
from dataset_ivf import DataConfig, IVFSequenceDataset
from model import ConvLSTMAutoencoder, config_from_checkpoint


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's parameters."""
    return next(model.parameters()).device


def inference_amp(checkpoint: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the run trained with (its --amp; fp32 for a checkpoint that does not say), on this
    device; fp16 on a CPU becomes bf16 where the CPU has native bf16 (else fp32)."""
    amp = checkpoint.get("args", {}).get("amp", "off")
    return cli.resolve_amp_dtype("auto" if amp == "fp16" and device.type == "cpu" else amp, device)


POOLS = ("mean", "mean_std")  # --pool: spatial summary of the (C, h, w) latent of a frame


def pool_space(z: torch.Tensor, pool: str) -> torch.Tensor:
    """Latents (..., C, h, w) pooled over space: (..., C) channel means, or (..., 2C) means then standard
    deviations (population) for pool='mean_std'."""
    means = z.mean(dim=(-2, -1))
    if pool == "mean":
        return means
    return torch.cat([means, z.std(dim=(-2, -1), correction=0)], dim=-1)


def pooled_width(config, pool: str) -> int:
    """Values per frame after pool_space."""
    return config.encoder_hidden_dim * (2 if pool == "mean_std" else 1)


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


@torch.inference_mode()
def encode_trajectories(model: ConvLSTMAutoencoder, recordings: list[torch.Tensor], chunk_len: int,
                        keep_full: bool = False, amp_dtype: torch.dtype | None = None, pool: str = "mean",
                        ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Encode whole recordings, each (n_i, 1, H, W), side by side, at most chunk_len frames a call, each
    carrying its own encoder state: identical to one pass per recording (the CNN's GroupNorm and the ConvLSTM
    work clip by clip). Lockstep without padding: each call advances every unfinished recording by the same
    number of frames, chunk_len or up to the end of the shortest one, which then leaves the batch with its
    state. Returns per recording its latents pooled over space (pool_space: (n_i, C) or (n_i, 2C)) float32 on
    the CPU and, with keep_full, the unpooled (n_i, C, h, w)."""
    device, lengths = model_device(model), [r.shape[0] for r in recordings]
    pooled, full = [[] for _ in recordings], [[] for _ in recordings]
    active, state, start = [k for k in range(len(recordings)) if lengths[k] > 0], None, 0
    while active:  # rows of the batch; state: each layer's (h, c) of those rows
        step = min(chunk_len, min(lengths[k] for k in active) - start)
        chunk = torch.stack([recordings[k][start:start + step] for k in active])  # (B, L, 1, H, W)
        with autocast(device, amp_dtype):
            z_seq, state = model.encode(chunk.to(device, non_blocking=True), state)  # (B, L, C, h, w)
        z_seq = z_seq.float()
        summary = pool_space(z_seq, pool).cpu()  # (B, L, C) or (B, L, 2C)
        for row, k in enumerate(active):
            pooled[k].append(summary[row])
            if keep_full:
                full[k].append(z_seq[row].cpu())  # (L, C, h, w)
        start += step
        still = [row for row, k in enumerate(active) if lengths[k] > start]
        if len(still) < len(active):  # finished recordings leave the batch with their state
            rows = torch.tensor(still, dtype=torch.long, device=device)
            state = [(h[rows], c[rows]) for h, c in state]
            active = [active[row] for row in still]
    width = pooled_width(model.config, pool)
    return [(torch.cat(p) if p else torch.zeros(0, width), torch.cat(f) if keep_full and f else None)
            for p, f in zip(pooled, full, strict=True)]


def state_stride(value: int | str, n_frames: int, dataset: IVFSequenceDataset) -> int:
    """Frames between two steps of the encoder state in a recording of n_frames (those --frame_step keeps): a number
    as given (at most n_frames); auto = the spacing of the frames of the clips the model trained on, n_frames /
    seq_len rounded (training clips spread seq_len frames over the recording), or 1 for --sampling window (clips
    of consecutive frames)."""
    if value == "auto":
        return 1 if dataset.sampling == "window" else max(1, round(n_frames / dataset.seq_len))
    return max(1, min(int(value), n_frames))


def encode_interleaved(model: ConvLSTMAutoencoder, recordings: list[torch.Tensor], strides: list[int], rows: int,
                       chunk_len: int, keep_full: bool = False, amp_dtype: torch.dtype | None = None,
                       pool: str = "mean") -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """encode_trajectories with the state stepping `strides[k]` frames at a time through recording k: its frames
    j, j + s, j + 2s, ... (s = strides[k], j < s) are s sub-recordings, each from the initial state, encoded `rows`
    side by side and put back in frame order. Every frame is encoded once, its latent made by a state that saw
    the frames the model's training clips would have shown it; stride 1 is one pass through the recording."""
    parts = [(k, j) for k, s in enumerate(strides) for j in range(s)]
    encoded = []
    for first in range(0, len(parts), rows):
        group = [recordings[k][j::strides[k]] for k, j in parts[first:first + rows]]  # each (n_kj, 1, H, W)
        encoded += encode_trajectories(model, group, chunk_len, keep_full, amp_dtype, pool)
    result = [None] * len(recordings)
    for (k, j), (pooled, full) in zip(parts, encoded, strict=True):
        if strides[k] == 1:  # one pass: the sequence is the recording
            result[k] = (pooled, full)
            continue
        if result[k] is None:  # (n, P) and (n, C, h, w), filled in frame order
            n = len(recordings[k])
            result[k] = (pooled.new_zeros(n, pooled.shape[1]),
                         None if full is None else full.new_zeros(n, *full.shape[1:]))
        result[k][0][j::strides[k]] = pooled
        if full is not None:
            result[k][1][j::strides[k]] = full
    return result


def encode_trajectory(model: ConvLSTMAutoencoder, frames: torch.Tensor, chunk_len: int, keep_full: bool = False,
                      amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One recording (n, 1, H, W) through encode_trajectories: mean-pooled (n, C) and, with keep_full,
    (n, C, h, w)."""
    return encode_trajectories(model, [frames], chunk_len, keep_full, amp_dtype)[0]


PIXEL_SIDE = 16  # raw-pixel control: frames area-averaged to 16 x 16 = 256 features (PCA'd in the analysis)


def untrained_model(checkpoint: dict, device: torch.device) -> ConvLSTMAutoencoder:
    """The run's model at its initial weights: same config, seeded with the training seed (the control)."""
    config = config_from_checkpoint(checkpoint)
    torch.manual_seed(int(DataConfig.from_checkpoint(checkpoint).seed))
    return ConvLSTMAutoencoder(config).to(device).eval()


def pixel_features(frames: torch.Tensor) -> np.ndarray:
    """Raw pixels of frames (n, 1, H, W), area-averaged to PIXEL_SIDE^2 and flattened: (n, PIXEL_SIDE^2)."""
    return F.adaptive_avg_pool2d(frames.float(), PIXEL_SIDE).flatten(1).numpy()
