"""Loss values on known inputs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

import train
from losses import AutoencoderLoss, ssim_window
from model import config_from_args

REPO = Path(__file__).resolve().parents[1]


def output_for(reconstruction, z_seq=None, logits=None):
    b, t = reconstruction.shape[:2]
    output = {"reconstruction": reconstruction, "z_seq": z_seq if z_seq is not None else torch.zeros(b, t, 2, 2, 2)}
    if logits is not None:
        output["logits"] = logits
    return output


@pytest.mark.parametrize("size", [32, 64, 128])
def test_identical_frames_give_zero_reconstruction_loss(size):
    x = torch.rand(2, 3, 1, size, size)
    losses = AutoencoderLoss()(output_for(x.clone()), {"video": x})
    assert losses["l1"].item() == 0
    assert losses["ms_ssim"].item() == pytest.approx(0, abs=1e-5)
    assert losses["reconstruction"].item() == pytest.approx(0, abs=1e-5)


def test_l1_matches_hand_computation():
    target = torch.zeros(1, 2, 1, 64, 64)
    reconstruction = torch.zeros_like(target)
    reconstruction[0, 0] = 0.5  # half the frames off by 0.5 -> mean 0.25
    losses = AutoencoderLoss()(output_for(reconstruction), {"video": target})
    assert losses["l1"].item() == pytest.approx(0.25)


@pytest.mark.parametrize("size,window", [(128, 7), (64, 3)])
def test_ms_ssim_equals_direct_per_frame_call(size, window):
    torch.manual_seed(0)
    target = torch.rand(2, 3, 1, size, size)
    reconstruction = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    losses = AutoencoderLoss()(output_for(reconstruction), {"video": target})
    direct = ms_ssim(reconstruction.flatten(0, 1), target.flatten(0, 1), data_range=1.0, win_size=window)
    assert ssim_window(size) == (window, True)
    assert losses["ms_ssim"].item() == pytest.approx(1 - direct.item(), abs=1e-5)


def test_weights_combine_the_parts():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 1, 64, 64)
    reconstruction = torch.rand_like(target)
    z_seq = torch.randn(2, 3, 4, 8, 8)
    logits = torch.randn(2, 2)
    labels = torch.tensor([0, 1])
    loss_fn = AutoencoderLoss(l1_weight=0.3, ms_ssim_weight=0.7, smooth_weight=0.2, cls_weight=0.5)
    parts = loss_fn(output_for(reconstruction, z_seq, logits), {"video": target, "label": labels})
    assert parts["smooth"].item() == pytest.approx((z_seq[:, 1:] - z_seq[:, :-1]).pow(2).mean().item())
    assert parts["classification"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
    expected_recon = 0.3 * parts["l1"] + 0.7 * parts["ms_ssim"]
    assert parts["reconstruction"].item() == pytest.approx(expected_recon.item())
    expected_total = expected_recon + 0.2 * parts["smooth"] + 0.5 * parts["classification"]
    assert parts["total"].item() == pytest.approx(expected_total.item())
    assert parts["prediction"].item() == 0  # no guessed frames in the output


@pytest.mark.parametrize("predict_next", [True, False])
def test_flags_give_the_prediction_weight_only_with_the_guess(predict_next):
    args = train.get_args_parser().parse_args(["--predict_weight", "0.25"] + ["--predict_next"] * predict_next)
    weights = AutoencoderLoss.from_args(args, config_from_args(args)).weights
    assert weights == {"l1": 0.5, "ms_ssim": 0.5, "smooth": 0.1, "classification": 0.0,
                       "prediction": 0.25 if predict_next else 0.0, "contrast": 0.0, "time_gap": 0.0, "phase": 0.0}


def test_next_frame_guess_is_scored_against_the_following_frames():
    torch.manual_seed(0)
    target = torch.rand(2, 4, 1, 64, 64)  # (B, T, C, H, W)
    output = output_for(torch.rand_like(target))
    output["prediction"] = torch.rand(2, 3, 1, 64, 64)  # frames 2..T
    loss_fn = AutoencoderLoss(l1_weight=0.3, ms_ssim_weight=0.7, smooth_weight=0.0, predict_weight=0.25)
    parts = loss_fn(output, {"video": target})
    following = target[:, 1:]
    scores = ms_ssim(output["prediction"].reshape(-1, 1, 64, 64), following.reshape(-1, 1, 64, 64),
                     data_range=1.0, win_size=3)
    expected = 0.3 * F.l1_loss(output["prediction"], following) + 0.7 * (1 - scores)
    assert parts["prediction"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["total"].item() == pytest.approx((parts["reconstruction"] + 0.25 * expected).item(), rel=1e-5)


def test_unknown_labels_add_no_classification_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]], requires_grad=True)
    target = torch.rand(2, 2, 1, 32, 32)
    loss_fn = AutoencoderLoss(cls_weight=1.0)
    both = loss_fn(output_for(target, logits=logits), {"video": target, "label": torch.tensor([1, -1])})
    assert both["classification"].item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([1])).item())
    none_known = loss_fn(output_for(target, logits=logits), {"video": target, "label": torch.tensor([-1, -1])})
    assert none_known["classification"].item() == 0
    none_known["total"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_constant_images_are_finite():
    target = torch.full((1, 2, 1, 64, 64), 0.5)
    for reconstruction in (torch.zeros_like(target), torch.full_like(target, 0.5)):
        reconstruction.requires_grad_(True)
        losses = AutoencoderLoss()(output_for(reconstruction), {"video": target})
        losses["total"].backward()
        assert all(torch.isfinite(v) for v in losses.values())
        assert torch.isfinite(reconstruction.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_autocast(dtype):
    torch.manual_seed(0)
    target = torch.rand(1, 2, 1, 128, 128)
    with torch.autocast("cpu", dtype=dtype):
        reconstruction = torch.sigmoid(torch.randn(1, 2, 1, 128, 128).to(dtype))
        losses = AutoencoderLoss()(output_for(reconstruction), {"video": target})
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    reference = AutoencoderLoss()(output_for(reconstruction.float()), {"video": target})
    assert losses["ms_ssim"].item() == pytest.approx(reference["ms_ssim"].item(), abs=1e-6)


def test_too_small_frames_are_refused():
    with pytest.raises(ValueError, match="too small"):
        ssim_window(2)


def test_contrast_is_low_for_matching_views_and_high_for_unrelated_ones():
    torch.manual_seed(0)
    z = torch.randn(4, 5, 8, 2, 2)  # (B, T, C, h, w): 20 distinct frames
    batch = {"video": torch.zeros(4, 5, 1, 16, 16)}
    loss_fn = AutoencoderLoss(contrast_weight=1.0, contrast_temperature=0.1)
    output = output_for(torch.zeros(4, 5, 1, 16, 16), z_seq=z)
    same = loss_fn({**output, "z_view": z + 0.01 * torch.randn_like(z)}, batch)["contrast"]
    other = loss_fn({**output, "z_view": torch.randn_like(z)}, batch)["contrast"]
    assert same.item() < 0.1 < np.log(20) / 2 < other.item()  # chance is log(B*T)
    assert loss_fn(output, batch)["contrast"].item() == 0  # no second view: nothing to compare


def test_time_gap_is_zero_for_a_clock_that_keeps_time_and_counts_only_differences():
    positions = torch.tensor([[0, 10, 30, 60], [5, 6, 7, 40]])
    frames = torch.tensor([100, 80])
    batch = {"video": torch.zeros(2, 4, 1, 16, 16), "frame_indices": positions, "recording_frames": frames}
    output = output_for(torch.zeros(2, 4, 1, 16, 16))
    loss_fn = AutoencoderLoss(time_gap_weight=1.0)
    exact = positions / frames[:, None] + torch.tensor([[3.0], [-1.0]])  # any offset per clip: only gaps count
    assert loss_fn({**output, "clock": exact}, batch)["time_gap"].item() == pytest.approx(0, abs=1e-6)
    assert loss_fn({**output, "clock": torch.zeros(2, 4)}, batch)["time_gap"].item() > 0.1
    assert loss_fn(output, batch)["time_gap"].item() == 0  # no clock


def test_phase_head_learns_from_annotated_frames_only():
    logits = torch.zeros(1, 3, 16, requires_grad=True)
    batch = {"video": torch.zeros(1, 3, 1, 16, 16), "phase_index": torch.tensor([[2, -1, -1]])}
    loss_fn = AutoencoderLoss(phase_weight=1.0)
    part = loss_fn({**output_for(torch.zeros(1, 3, 1, 16, 16)), "phase_logits": logits}, batch)["phase"]
    assert part.item() == pytest.approx(np.log(16))
    part.backward()
    assert logits.grad[0, 1:].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0  # unknown phases add nothing


def test_the_libraries_note_on_copying_the_scale_weights_does_not_reach_the_user():
    """pytorch_msssim copies the device tensor of scale weights it is given (losses.ms_ssim_weights), with a
    UserWarning meant for its own callers; losses.py silences that one warning for everyone who imports it."""
    code = "import torch, losses; x = torch.rand(1, 2, 1, 64, 64); print(losses.ms_ssim_loss(x, 0.9 * x).item())"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert 0 < float(run.stdout) < 1
