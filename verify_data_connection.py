"""Check the whole path once: index.csv -> dataset -> DataLoader -> model -> loss -> backward -> optimiser step.

The flags are train.py's, checked by the same function (train.prepare), and the step goes the same way (a batch
dict through model.forward_loss with the loss the flags give, under the same autocast). Without --index_csv a
small synthetic set is written to a temporary folder first. Exit 0 when every step worked, 2 on bad input (one
line), 1 when a step fails, 85 (Ctrl-C 130) when a stop signal ends it (it writes nothing to keep).
"""
import sys
import tempfile

import torch

import cli
import train
from dataset_ivf import ShieldedLoader
from losses import AutoencoderLoss
from make_synthetic_data import make_synthetic_dataset
from model import ConvLSTMAutoencoder, forward_loss, to_device


def get_args_parser():
    """train.py's flags (the same names and defaults); without --index_csv a synthetic set is used."""
    parser = train.get_args_parser()
    parser.prog, parser.description = "verify_data_connection.py", __doc__.splitlines()[0]
    parser.set_defaults(index_csv=None)
    return parser


def run_check(args, run: train.Run, config, data_config):
    """Run every step once, printing shapes and losses; raises on failure."""
    dataset, _ = train.load_datasets(args, data_config)
    print(f"dataset: {len(dataset.rows)} training rows, {len(dataset)} training clips an epoch, from {args.index_csv}")
    loader = ShieldedLoader(dataset, batch_size=min(args.batch_size, len(dataset)), shuffle=True,
                            num_workers=cli.resolve_num_workers(args.num_workers, run.device.type))
    batch = next(iter(loader))
    video, labels = batch["video"], batch["label"]  # (B, T, 1, H, W), (B,)
    print(f"batch: video {tuple(video.shape)} {video.dtype} range [{video.min():.3f}, {video.max():.3f}], "
          f"labels {labels.tolist()}, frame_indices {tuple(batch['frame_indices'].shape)}")
    if not (0.0 <= video.min() and video.max() <= 1.0):
        raise RuntimeError("video values outside [0, 1]")

    torch.manual_seed(args.seed)
    model = ConvLSTMAutoencoder(config).to(run.device).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters on {run.device}, autocast {run.amp_dtype or 'off'}")
    with torch.no_grad():
        output = model(video.to(run.device))
    print("output: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in output.items()))
    if output["reconstruction"].shape != video.shape:
        raise RuntimeError(f"reconstruction {tuple(output['reconstruction'].shape)} != input {tuple(video.shape)}")
    loss_fn = AutoencoderLoss.from_args(args, config)
    losses = forward_loss(model, loss_fn, to_device(batch, run.device), run.amp_dtype)
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


def verify(args) -> int:
    """train.py's checks (train.prepare), then every step once; 1 when a step fails."""
    with cli.stop_signals(cli.StopSignal("the check stopped; it keeps nothing")) as stop:
        run = train.Run(args, cli.resolve_device(args.device), None, 0, 1, 0, stop)
        config, data_config = train.prepare(args, run, writes=False)
        with tempfile.TemporaryDirectory(prefix="ivf_verify_") as tmp:
            if args.index_csv is None:
                args.index_csv = make_synthetic_dataset(tmp, n_embryos=4, n_frames=max(args.seq_len, 12),
                                                        size=max(64, args.image_size), seed=args.seed)
                print(f"no --index_csv: wrote a synthetic set to {args.index_csv}")
            try:
                run_check(args, run, config, data_config)
            except RuntimeError as e:
                print(f"failed: {e}", file=sys.stderr)
                return 1
    print("OK: data, model, loss, backward and optimiser step all worked")
    return 0


def main(args) -> int:
    """verify() with cli.py's exit-code table: bad input one line and 2, a stop 85 or 130."""
    return cli.run_main("verify_data_connection.py", verify, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
