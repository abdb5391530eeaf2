"""Check the whole path once: index.csv -> dataset -> DataLoader -> model -> loss -> backward -> optimiser step.

Without --index_csv a small synthetic set is written to a temporary folder first.
Exit 0 when every step worked, 2 on bad input (one line), 1 when a step fails.
"""
import sys
import tempfile

import torch
from torch.utils.data import DataLoader

import cli
from dataset_ivf import DataConfig, IVFSequenceDataset
from losses import AutoencoderLoss
from make_synthetic_data import make_synthetic_dataset
from model import ConvLSTMAutoencoder, config_from_args
from train import get_args_parser as train_args_parser


def get_args_parser():
    """train.py's flags (the same names and defaults); without --index_csv a synthetic set is used."""
    parser = train_args_parser()
    parser.prog, parser.description = "verify_data_connection.py", __doc__.splitlines()[0]
    parser.set_defaults(index_csv=None)
    return parser


def run_check(args, index_csv, model, device):
    """Run every step once, printing shapes and losses; raises on failure."""
    dataset = IVFSequenceDataset(index_csv, DataConfig.from_args(args), split=None, training=True)
    print(f"dataset: {len(dataset.rows)} rows, {len(dataset)} training clips an epoch, from {index_csv}")
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

    loss_fn = AutoencoderLoss.from_args(args)
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
    try:
        if args.batch_size < 1:
            raise cli.InputError(f"--batch_size must be at least 1, got {args.batch_size}")
        cli.check_seed(args.seed)
        torch.manual_seed(args.seed)
        device = cli.resolve_device(args.device)
        model = ConvLSTMAutoencoder(config_from_args(args)).to(device).train()
        with tempfile.TemporaryDirectory(prefix="ivf_verify_") as tmp:
            index_csv = args.index_csv
            if index_csv is None:
                index_csv = make_synthetic_dataset(tmp, n_embryos=4, n_frames=max(args.seq_len, 12),
                                                   size=max(64, args.image_size), seed=args.seed)
                print(f"no --index_csv: wrote a synthetic set to {index_csv}")
            run_check(args, index_csv, model, device)
    except cli.ScriptError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    print("OK: data, model, loss, backward and optimiser step all worked")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
