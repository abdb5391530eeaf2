"""Training loss: L1 + (1 - MS-SSIM) reconstruction, latent temporal smoothness, classification."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim

# pytorch_msssim asserts min(H, W) > (win_size - 1) * 16 for MS-SSIM whatever the number of
# scales, so its default 11-px window needs more than 160 px. We take the largest odd window up to
# 11 that passes (7 px at 128, 3 px at 64, 11 px from 176 up) with the standard 5 scales and
# weights. Below 33 px no window passes and the loss falls back to single-scale SSIM with a window
# of at most 7 px (the tiny configurations of the tests).
MAX_WIN_SIZE = 11
MS_SSIM_SCALES_DOWNSAMPLING = 16
# The parts AutoencoderLoss returns, in the order logs and checkpoints list them (`ms_ssim` is 1 - MS-SSIM).
# `prediction` (last, so that older runs' sums line up) is the reconstruction loss of the guessed next frames.
LOSS_KEYS = ("total", "reconstruction", "l1", "ms_ssim", "smooth", "classification", "prediction")


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
            score = ms_ssim(x, y, data_range=1.0, size_average=True, win=win)
        else:
            score = ssim(x, y, data_range=1.0, size_average=True, win=win)
        return 1.0 - score


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


def add_loss_args(group):
    """The objective's flags (train.py)."""
    group.add_argument("--l1_weight", type=float, default=0.5, help="weight of the L1 loss (default: %(default)s)")
    group.add_argument("--ms_ssim_weight", type=float, default=0.5, help="weight of 1 - MS-SSIM (default: %(default)s)")
    group.add_argument("--smooth_weight", type=float, default=0.1,
                       help="weight of the latent temporal smoothness loss (default: %(default)s)")
    group.add_argument("--cls_weight", type=float, default=0.1,
                       help="weight of the classification loss on labelled clips; used only with "
                            "--use_classifier (default: %(default)s)")
    group.add_argument("--predict_weight", type=float, default=0.5,
                       help="weight of the next-frame guess's loss (L1 and 1 - MS-SSIM weighted as for the "
                            "reconstruction); used only with --predict_next (default: %(default)s)")
    group.add_argument("--mask_ratio", type=float, default=0.0,
                       help="blank this fraction of each training clip's frames (never the first) in the input; the "
                            "loss still asks for every frame, so the recurrent state must carry it "
                            "(default: %(default)s)")


class AutoencoderLoss(nn.Module):
    """total = l1_weight*L1 + ms_ssim_weight*(1 - MS-SSIM) + smooth_weight*smooth + cls_weight*CE
    + predict_weight*prediction, where prediction is the first two terms for the guessed next frames.

    Returns every part unweighted (plus `reconstruction` and `total`) as scalar fp32 tensors.
    """

    def __init__(self, l1_weight: float = 0.5, ms_ssim_weight: float = 0.5, smooth_weight: float = 0.1,
                 cls_weight: float = 0.0, predict_weight: float = 0.0):
        super().__init__()
        self.l1_weight = l1_weight
        self.ms_ssim_weight = ms_ssim_weight
        self.smooth_weight = smooth_weight
        self.cls_weight = cls_weight
        self.predict_weight = predict_weight

    @classmethod
    def from_args(cls, args) -> "AutoencoderLoss":
        """The loss of add_loss_args' flags; no classification term without --use_classifier, no prediction term
        without --predict_next."""
        return cls(args.l1_weight, args.ms_ssim_weight, args.smooth_weight,
                   args.cls_weight if args.use_classifier else 0.0,
                   args.predict_weight if args.predict_next else 0.0)

    def forward(self, output: dict[str, torch.Tensor], target: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        reconstruction = output["reconstruction"].float()  # (B, T, C, H, W)
        target = target.float()  # (B, T, C, H, W)
        l1 = F.l1_loss(reconstruction, target)
        ms_ssim_part = ms_ssim_loss(reconstruction, target)
        smooth = smoothness_loss(output["z_seq"])
        if "logits" in output:
            classification = classification_loss(output["logits"], labels)
        else:
            classification = torch.zeros((), device=target.device)
        recon = self.l1_weight * l1 + self.ms_ssim_weight * ms_ssim_part
        if "prediction" in output:  # frames 2..T guessed from the latents of 1..T-1
            guess, following = output["prediction"].float(), target[:, 1:]  # (B, T-1, C, H, W)
            prediction = (self.l1_weight * F.l1_loss(guess, following)
                          + self.ms_ssim_weight * ms_ssim_loss(guess, following))
        else:
            prediction = torch.zeros((), device=target.device)
        total = (recon + self.smooth_weight * smooth + self.cls_weight * classification
                 + self.predict_weight * prediction)
        return {"total": total, "reconstruction": recon, "l1": l1, "ms_ssim": ms_ssim_part,
                "smooth": smooth, "classification": classification, "prediction": prediction}
