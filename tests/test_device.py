"""The device-aware tests: model, loss, one training step (eager and compiled whole) and batched chunked encoding
on every device present (CPU here; CUDA too when gpu_check.py runs them on a GPU). Tiny configurations."""

import copy

import pytest
import pytorch_msssim
import torch

import cli
import train
from latent_encoding import encode_trajectories
from losses import MS_SSIM_WEIGHTS, AutoencoderLoss, ssim_window
from model import ConvLSTMAutoencoder, ModelConfig, training_forward

TINY = dict(image_size=16, cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=2, decoder_hidden_dim=8,
            decoder_layers=1, classifier_hidden=(16, 8))


def tiny_model(device, **overrides) -> ConvLSTMAutoencoder:
    torch.manual_seed(0)
    return ConvLSTMAutoencoder(ModelConfig(**{**TINY, **overrides})).to(device)


def amp_dtypes(device) -> list:
    """fp32, and the autocast dtype --amp auto picks on this device (when there is one)."""
    auto = cli.resolve_amp_dtype("auto", device)
    return [None] + ([auto] if auto is not None else [])


def test_model_forward_and_every_gradient_on(device):
    model = tiny_model(device)
    x = torch.rand(2, 3, 1, 16, 16, device=device)  # (B, T, 1, H, W)
    for amp_dtype in amp_dtypes(device):
        model.zero_grad()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
        assert out["reconstruction"].shape == x.shape and out["reconstruction"].dtype == torch.float32
        assert out["z_seq"].shape == (2, 3, 8, 2, 2) and out["logits"].shape == (2, 2)
        (out["reconstruction"].mean() + out["logits"].float().square().mean()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (amp_dtype, name)


def test_loss_parts_on(device):
    x = torch.rand(2, 3, 1, 16, 16, device=device)
    output = {"reconstruction": x.clone(), "z_seq": torch.zeros(2, 3, 8, 2, 2, device=device),
              "logits": torch.zeros(2, 2, device=device)}
    parts = AutoencoderLoss(cls_weight=1.0)(output, {"video": x, "label": torch.tensor([0, -1], device=device)})
    assert all(v.device.type == device.type and v.dtype == torch.float32 for v in parts.values())
    assert parts["reconstruction"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["classification"].item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_ms_ssim_gets_its_scale_weights_on_the_frames_device(device, monkeypatch):
    """From a Python list pytorch_msssim makes its 5 scale weights at every call, a blocking host-to-device copy on
    CUDA (twice a step with the next-frame guess): losses.py hands it a tensor on the frames' device instead."""
    calls, library = [], pytorch_msssim.ms_ssim

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return library(*args, **kwargs)

    monkeypatch.setattr(pytorch_msssim, "ms_ssim", recording)
    x = torch.rand(2, 3, 1, 64, 64, device=device)  # 64 px: the multi-scale branch
    output = {"reconstruction": x.flip(-1), "z_seq": torch.zeros(2, 3, 8, 8, 8, device=device),
              "prediction": x[:, 1:].flip(-2)}
    parts = AutoencoderLoss(predict_weight=0.5)(output, {"video": x})
    assert len(calls) == 2 and torch.isfinite(parts["total"])  # the reconstruction and the next-frame guess
    for kwargs in calls:
        weights = kwargs["weights"]
        assert isinstance(weights, torch.Tensor) and weights.device == x.device and weights.dtype == torch.float32
        assert weights.tolist() == pytest.approx(MS_SSIM_WEIGHTS)  # the library's (test_losses checks the values)


def test_one_training_step_on(device):
    model = tiny_model(device)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(2, 3, 1, 16, 16, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    amp_dtype = amp_dtypes(device)[-1]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    batch = {"video": x, "label": torch.tensor([0, 1], device=device)}
    parts = train.train_step(model, batch, AutoencoderLoss(cls_weight=1.0), optimizer, scaler, amp_dtype, grad_clip=1.0)
    assert parts["total"].device.type == device.type and torch.isfinite(parts["total"])
    changed = [not torch.equal(before[k], v) for k, v in model.state_dict().items()]
    assert all(changed) and all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_compiled_whole_step_trains_like_eager(device, monkeypatch):
    """--compile step (the forward and loss as one graph; CUDA graphs on CUDA) gives the eager weights."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 on both sides, not TF32 convolutions
    eager, compiled = tiny_model(device, encoder_layers=1), tiny_model(device, encoder_layers=1)
    forward = training_forward(compiled, "step", device)
    loss_fn = AutoencoderLoss(cls_weight=1.0)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    torch.manual_seed(1)
    for _ in range(3):
        batch = {"video": torch.rand(2, 2, 1, 16, 16, device=device), "label": torch.tensor([0, 1], device=device)}
        expected = train.train_step(eager, batch, loss_fn, optimizers[0], scaler, None, 1.0)
        got = train.train_step(compiled, batch, loss_fn, optimizers[1], scaler, None, 1.0, forward)
        torch.testing.assert_close(got["total"], expected["total"], rtol=1e-3, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=name)


def test_batched_encoding_of_unequal_recordings_equals_one_at_a_time(device):
    """Recordings of 7, 12, 3 and 9 frames side by side, chunks of 4: each keeps its own state up to its last frame."""
    model = tiny_model(device).eval()
    torch.manual_seed(2)
    recordings = [torch.rand(n, 1, 16, 16) for n in (7, 12, 3, 9)]
    for amp_dtype in amp_dtypes(device):
        batched = encode_trajectories(model, recordings, chunk_len=4, keep_full=True, amp_dtype=amp_dtype)
        tolerance = dict(rtol=1e-4, atol=1e-5) if amp_dtype is None else dict(rtol=3e-2, atol=2e-2)
        for frames, (pooled, full) in zip(recordings, batched, strict=True):
            alone, alone_full = encode_trajectories(model, [frames], 4, keep_full=True, amp_dtype=amp_dtype)[0]
            assert pooled.shape == (len(frames), 8) and full.shape == (len(frames), 8, 2, 2)
            torch.testing.assert_close(pooled, alone, **tolerance)
            torch.testing.assert_close(full, alone_full, **tolerance)
            if amp_dtype is None:  # and the chunked, batched latents equal one pass over the whole recording
                with torch.no_grad():
                    z_seq, _ = model.encode(frames[None].to(device))  # (1, n, C, h, w)
                torch.testing.assert_close(pooled, z_seq[0].mean(dim=(2, 3)).cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA's sync debug mode)")
@pytest.mark.parametrize("how,predict_next", [("off", True), ("step", False)])
def test_cuda_step_has_no_host_sync(how, predict_next):
    """A training step of the default model at 64 px, where the loss takes MS-SSIM's 5 scales (forward, loss, backward,
    clipping, fused AdamW), eager with the next-frame guess (two MS-SSIM calls) or compiled and captured as CUDA graphs,
    never waits for the GPU: CUDA's sync debug mode raises on any synchronising call."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = ModelConfig(image_size=64, predict_next=predict_next)
    assert ssim_window(config.image_size)[1]  # the multi-scale branch
    model = ConvLSTMAutoencoder(config).to(device)
    forward = training_forward(model, how, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss_fn = AutoencoderLoss(cls_weight=1.0, predict_weight=0.5 if predict_next else 0.0)
    batch = {"video": torch.rand(2, 3, 1, 64, 64, device=device), "label": torch.tensor([0, 1], device=device)}
    for _ in range(3):  # the optimiser's state; compile, warm up, record the CUDA graphs
        train.train_step(model, batch, loss_fn, optimizer, scaler, None, 1.0, forward)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        parts = train.train_step(model, batch, loss_fn, optimizer, scaler, None, 1.0, forward)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(parts["total"]).item() and (parts["prediction"] > 0).item() == predict_next
