"""Check the whole path once: index.csv -> dataset -> DataLoader -> model -> loss -> backward -> optimiser step.

Without --index_csv a small synthetic set is written to a temporary folder first.
Exit 0 when every step worked, 2 on bad input (one line), 1 when a step fails.
"""
import argparse
import sys
import tempfile

import torch
from torch.utils.data import DataLoader

from cli import DEVICE_CHOICES, InputError, resolve_device
from dataset_ivf import IVFSequenceDataset, add_data_args
from losses import AutoencoderLoss
from make_synthetic_data import make_synthetic_dataset
from model import ConvLSTMAutoencoder, add_model_args, config_from_args


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    add_data_args(parser)
    parser.set_defaults(index_csv=None)  # None: build a synthetic set
    parser.add_argument("--batch_size", type=int, default=2, help="clips per batch (default: %(default)s)")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--device", type=str, default="auto", choices=DEVICE_CHOICES,
                        help="device; auto picks CUDA when available (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    return parser


def run_check(args, index_csv, model, device):
    """Run every step once, printing shapes and losses; raises on failure."""
    dataset = IVFSequenceDataset(index_csv, seq_len=args.seq_len, image_size=args.image_size, split=None,
                                 sampling=args.sampling, normalize=args.normalize, augment=args.augment,
                                 cache_dir=args.cache_dir, skip_bad=args.skip_bad,
                                 annotations_dir=args.annotations_dir, training=True,
                                 val_fraction=args.val_fraction, seed=args.seed)
    print(f"dataset: {len(dataset)} rows from {index_csv}")
    loader = DataLoader(dataset, batch_size=min(args.batch_size, len(dataset)), shuffle=True,
                        num_workers=args.num_workers)
    batch = next(iter(loader))
    video, labels = batch["video"].to(device), batch["label"].to(device)  # (B, T, 1, H, W), (B,)
    print(f"batch: video {tuple(video.shape)} {video.dtype} range [{video.min():.3f}, {video.max():.3f}], "
          f"labels {labels.tolist()}, frame_indices {tuple(batch['frame_indices'].shape)}")
    if not (0.0 <= video.min() and video.max() <= 1.0):
        raise RuntimeError("video values outside [0, 1]")

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters on {device}")
    output = model(video)
    print("output: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in output.items()))
    if output["reconstruction"].shape != video.shape:
        raise RuntimeError(f"reconstruction {tuple(output['reconstruction'].shape)} != input {tuple(video.shape)}")

    loss_fn = AutoencoderLoss(cls_weight=1.0 if model.config.use_classifier else 0.0)
    losses = loss_fn(output, video, labels)
    print("loss: " + ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()))
    if not torch.isfinite(losses["total"]):
        raise RuntimeError("total loss is not finite")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        raise RuntimeError(f"non-finite gradients in {bad[:3]}")
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters(), strict=True))
    print(f"step: {changed} of {len(before)} parameter tensors updated"
          + (f"; no gradient for {no_grad}" if no_grad else ""))
    if changed == 0:
        raise RuntimeError("the optimiser step changed no parameter")


def main(args):
    if args.image_size % 8 or args.image_size < 8 or args.seq_len < 1 or args.batch_size < 1:
        print("error: --image_size must be a positive multiple of 8; --seq_len and --batch_size at least 1",
              file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    try:
        device = resolve_device(args.device)
        model = ConvLSTMAutoencoder(config_from_args(args)).to(device).train()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="ivf_verify_") as tmp:
            index_csv = args.index_csv
            if index_csv is None:
                index_csv = make_synthetic_dataset(tmp, n_embryos=4, n_frames=max(args.seq_len, 12),
                                                   size=max(64, args.image_size), seed=args.seed)
                print(f"no --index_csv: wrote a synthetic set to {index_csv}")
            run_check(args, index_csv, model, device)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print("OK: data, model, loss, backward and optimiser step all worked")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
