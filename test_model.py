"""Smoke check of the full default model: `python test_model.py` prints a report; pytest collects it too."""

import sys
import time

import torch

from losses import AutoencoderLoss
from model import ConvLSTMAutoencoder, ModelConfig

BATCH, FRAMES = 2, 20


def build_model() -> ConvLSTMAutoencoder:
    torch.manual_seed(0)
    return ConvLSTMAutoencoder(ModelConfig())


def convlstm_params(input_dim: int, hidden: int, layers: int, k: int = 3) -> int:
    """Input convolution (with bias) and hidden convolution (without) to 4 gates, per layer."""
    return sum((dim + hidden) * 4 * hidden * k * k + 4 * hidden for dim in [input_dim] + [hidden] * (layers - 1))


def test_parameter_count():
    """The fixed architecture of DESIGN.md, part by part (conv weights + GroupNorm affine)."""
    model = build_model()
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    cnn = sum(i * o * 9 + 2 * o for i, o in ((1, 64), (64, 128), (128, 256)))
    deconv = sum(i * o * 16 + 2 * o for i, o in ((128, 64), (64, 32))) + 32 * 1 * 16 + 1
    mlp = 256 * 512 + 512 + 512 * 256 + 256 + 256 * 2 + 2
    assert counts == {"frame_encoder": cnn, "encoder": convlstm_params(256, 256, 2),
                      "decoder": convlstm_params(256, 128, 2), "frame_decoder": deconv, "classifier": mlp}
    assert sum(counts.values()) == 13_187_459


def test_forward_shapes_loss_and_backward():
    config = ModelConfig()
    model = build_model()
    size, hidden, latent = config.image_size, config.encoder_hidden_dim, config.image_size // 8
    x = torch.rand(BATCH, FRAMES, 1, size, size)
    output = model(x)
    assert output["reconstruction"].shape == (BATCH, FRAMES, 1, size, size)
    assert output["z_seq"].shape == (BATCH, FRAMES, hidden, latent, latent)
    assert output["z_last"].shape == (BATCH, hidden, latent, latent)
    assert output["logits"].shape == (BATCH, config.num_classes)
    losses = AutoencoderLoss(cls_weight=1.0)(output, {"video": x, "label": torch.tensor([1, 0])})
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_batch_sizes():
    model = build_model()
    loss_fn = AutoencoderLoss(cls_weight=1.0)
    for batch in (1, 2, 4):
        x = torch.rand(batch, 4, 1, 128, 128)
        model.zero_grad()
        losses = loss_fn(model(x), {"video": x, "label": torch.ones(batch, dtype=torch.long)})
        losses["total"].backward()
        assert torch.isfinite(losses["total"]), batch


def main() -> int:
    checks = [test_parameter_count, test_forward_shapes_loss_and_backward, test_batch_sizes]
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ConvLSTMAutoencoder, default config: {n_params:,} parameters")
    print(f"  {ModelConfig()}")
    failed = 0
    for check in checks:
        start = time.perf_counter()
        try:
            check()
            status = "ok"
        except Exception as error:  # report every failing check, then exit non-zero
            status = f"FAILED: {type(error).__name__}: {error}"
            failed += 1
        print(f"  {check.__name__:<40s} {time.perf_counter() - start:6.1f} s  {status}")
    print("smoke check passed" if not failed else f"smoke check: {failed} of {len(checks)} checks failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
