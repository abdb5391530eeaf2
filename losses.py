"""The training loss: one function per part of cli.LOSS_PARTS (L1 and 1 - MS-SSIM of the reconstruction, latent
temporal smoothness, classification, the next-frame guess), and AutoencoderLoss, which weighs them as the table
says. A part is a function (output, batch, loss) -> scalar tensor (loss: the AutoencoderLoss, for its weights
and settings), registered under its name by @loss_part.
"""

import warnings
from collections.abc import Callable

import pytorch_msssim
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import LOSS_PARTS, LOSS_WEIGHT_FLAGS

# pytorch_msssim asserts min(H, W) > (win_size - 1) * 16 for MS-SSIM whatever the number of
# scales, so its default 11-px window needs more than 160 px. We take the largest odd window up to
# 11 that passes (7 px at 128, 3 px at 64, 11 px from 176 up) with the standard 5 scales and
# weights. Below 33 px no window passes and the loss falls back to single-scale SSIM with a window
# of at most 7 px (the tiny configurations of the tests).
MAX_WIN_SIZE = 11
MS_SSIM_SCALES_DOWNSAMPLING = 16


def ssim_window(image_side: int) -> tuple[int, bool]:
    """(window size, multi-scale?) that pytorch_msssim accepts for square-ish frames of this side."""
    win = MAX_WIN_SIZE
    while win >= 3:
        if image_side > (win - 1) * MS_SSIM_SCALES_DOWNSAMPLING:
            return win, True
        win -= 2
    win = min(7, image_side if image_side % 2 == 1 else image_side - 1)
    if win < 3:
        raise ValueError(f"frames of {image_side} px are too small for SSIM; use at least 8 px")
    return win, False


def gaussian_window(size: int, channels: int, device: torch.device, sigma: float = 1.5) -> torch.Tensor:
    """pytorch_msssim's 1-D Gaussian window (its default sigma), one per channel: (channels, 1, 1, size). Made on
    the device: the library's own is made on the CPU and copied over at every call, a host sync each time (and
    a CPU op that keeps a compiled step from running as a CUDA graph)."""
    coords = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).reshape(1, 1, 1, size).repeat(channels, 1, 1, 1)


# pytorch_msssim's 5 scale weights (its default). From a Python list the library makes them with X.new_tensor at every
# call: a blocking host-to-device copy in every eager step (twice with --predict_next). ms_ssim_weights makes them on
# the device instead, and the library's copy of a tensor is then a device copy, which it announces with a UserWarning
# (here and in torch's tracing of a compiled step) that tells a user nothing: that warning is silenced.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning,
                        module=r"(pytorch_msssim|torch)\.")


def ms_ssim_weights(device: torch.device) -> torch.Tensor:
    """MS_SSIM_WEIGHTS as a float32 tensor (5,) made on the device by fills (kernel arguments, no copy from the host):
    no state to keep, and a compiled step sees constants."""
    return torch.stack([torch.full((), w, dtype=torch.float32, device=device) for w in MS_SSIM_WEIGHTS])


def ms_ssim_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean MS-SSIM over frames of (B, T, C, H, W) videos, in fp32 with data_range 1.

    Each frame is its own 2-D image: frames are laid along the channel axis as (1, B*T*C, H, W),
    which gives the same mean as (B*T*C, 1, H, W) with one grouped convolution (much faster on the
    CPU). A 5-D input would silently become 3-D SSIM over time.
    """
    with torch.autocast(device_type=reconstruction.device.type, enabled=False):
        x = reconstruction.float().reshape(1, -1, *reconstruction.shape[-2:])  # (1, B*T*C, H, W)
        y = target.float().reshape(1, -1, *target.shape[-2:])
        win_size, multiscale = ssim_window(min(x.shape[-2:]))
        win = gaussian_window(win_size, x.shape[1], x.device)
        if multiscale:
            score = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=True, win=win,
                                           weights=ms_ssim_weights(x.device))
        else:
            score = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=True, win=win)
        return 1.0 - score


def frame_loss(frames: torch.Tensor, target: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    """The reconstruction parts' weighted sum for other frames: l1 x L1 + ms_ssim x (1 - MS-SSIM)."""
    return weights["l1"] * F.l1_loss(frames, target) + weights["ms_ssim"] * ms_ssim_loss(frames, target)


def smoothness_loss(z_seq: torch.Tensor) -> torch.Tensor:
    """Mean squared step between consecutive latents of z_seq (B, T, C, h, w); 0 for T = 1."""
    z = z_seq.float()
    if z.shape[1] < 2:
        return z.sum() * 0.0
    return (z[:, 1:] - z[:, :-1]).pow(2).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over labelled clips only (label -1 = unknown); 0 when none is labelled.

    The result stays attached to logits even when it is 0, so DDP sees a gradient for every
    classifier parameter at every step.
    """
    logits = logits.float()
    if labels is None:
        return logits.sum() * 0.0
    labels = labels.to(logits.device).long()
    known = labels >= 0
    per_clip = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")  # (B,)
    return (per_clip * known).sum() / known.sum().clamp(min=1)


PARTS: dict[str, Callable[[dict, dict, dict], torch.Tensor]] = {}  # part name -> its function


def loss_part(fn):
    """Register fn as the loss part of cli.LOSS_PARTS named fn.__name__."""
    PARTS[fn.__name__] = fn
    return fn


@loss_part
def l1(output, batch, loss):
    """Mean absolute error of the reconstruction (B, T, C, H, W) against the clip."""
    return F.l1_loss(output["reconstruction"].float(), batch["video"].float())


@loss_part
def ms_ssim(output, batch, loss):
    """1 - MS-SSIM of the reconstruction against the clip."""
    return ms_ssim_loss(output["reconstruction"].float(), batch["video"].float())


@loss_part
def smooth(output, batch, loss):
    """Mean squared step between consecutive latents of z_seq."""
    return smoothness_loss(output["z_seq"])


@loss_part
def classification(output, batch, loss):
    """Cross-entropy of the classifier's logits on the labelled clips; 0 without a classifier."""
    if "logits" not in output:
        return torch.zeros((), device=batch["video"].device)
    return classification_loss(output["logits"], batch.get("label"))


@loss_part
def prediction(output, batch, loss):
    """The reconstruction loss of frames 2..T guessed from the latents of 1..T-1; 0 without the predictor."""
    if "prediction" not in output:
        return torch.zeros((), device=batch["video"].device)
    return frame_loss(output["prediction"].float(), batch["video"].float()[:, 1:], loss.weights)  # (B, T-1, C, H, W)


@loss_part
def contrast(output, batch, loss):
    """InfoNCE between the two views' per-frame pooled latents (cosine similarity over the temperature): each frame
    of a clip against the same frame of its other view, among every frame and clip of the batch, both ways; 0
    without a second view."""
    if "z_view" not in output:
        return torch.zeros((), device=batch["video"].device)
    a, b = (F.normalize(output[k].float().mean(dim=(3, 4)).flatten(0, 1), dim=1) for k in ("z_seq", "z_view"))
    logits = a @ b.T / loss.contrast_temperature  # (B*T, B*T): row i's positive is column i
    targets = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@loss_part
def time_gap(output, batch, loss):
    """Mean absolute error of the time between every two frames of a clip, guessed as the difference of the clock
    read from their latents, in fractions of the recording (frame_indices / recording_frames); 0 without a clock."""
    if "clock" not in output:
        return torch.zeros((), device=batch["video"].device)
    clock = output["clock"].float()  # (B, T)
    position = batch["frame_indices"].float() / batch["recording_frames"].float()[:, None]  # (B, T)
    guess, gap = (v[:, None, :] - v[:, :, None] for v in (clock, position))  # (B, T, T): frame j minus frame i
    return (guess - gap).abs().mean()


@loss_part
def phase(output, batch, loss):
    """Cross-entropy of the per-frame phase head over the annotated frames (phase_index -1 adds nothing); 0 without
    the head."""
    if "phase_logits" not in output:
        return torch.zeros((), device=batch["video"].device)
    labels = batch.get("phase_index")
    return classification_loss(output["phase_logits"].flatten(0, 1), None if labels is None else labels.flatten())


class AutoencoderLoss(nn.Module):
    """total = the sum over cli.LOSS_PARTS of weight x part: by default 0.5 L1 + 0.5 (1 - MS-SSIM) + 0.1 smooth
    (+ cls_weight CE + predict_weight prediction, where prediction is the first two terms for the guessed next
    frames). Keyword arguments are the parts' weight flags (`cls_weight=1.0`); a part that needs a model switch
    (cli.LossPart.needs) weighs 0 unless given.

    forward(output, batch) returns every part unweighted, `reconstruction` and `total`, as scalar fp32 tensors.
    """

    def __init__(self, contrast_temperature: float = 0.1, **weights: float):
        super().__init__()
        self.contrast_temperature = contrast_temperature
        unknown = set(weights) - set(LOSS_WEIGHT_FLAGS)
        if unknown:
            raise TypeError(f"unknown loss weights {sorted(unknown)}; the parts' weights are {LOSS_WEIGHT_FLAGS}")
        self.weights = {part.name: float(weights.get(part.flag, 0.0 if part.needs else part.default))
                        for part in LOSS_PARTS}

    @classmethod
    def from_args(cls, args, config) -> "AutoencoderLoss":
        """The loss of the weight flags (cli.add_loss_args); a part whose switch (a ModelConfig field) is off
        in config weighs 0."""
        return cls(args.contrast_temperature, **{part.flag: getattr(args, part.flag)
                                                 if part.needs is None or getattr(config, part.needs) else 0.0
                                                 for part in LOSS_PARTS})

    def forward(self, output: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = {name: PARTS[name](output, batch, self) for name in self.weights}
        reconstruction = sum(self.weights[p.name] * parts[p.name] for p in LOSS_PARTS if p.reconstruction)
        total = reconstruction
        for part in LOSS_PARTS:
            if not part.reconstruction:
                total = total + self.weights[part.name] * parts[part.name]
        return {"total": total, "reconstruction": reconstruction, **parts}
