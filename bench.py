"""Benchmark of the training step, FLOP utilisation, peak memory and the data loader, in one process.

Measures, in one run: (1) training steps/s and clips/s of the project's model (forward, the real
AutoencoderLoss, backward, AdamW step) under --amp; (2) the same for a plain reference written here
(one convolution over cat(x_t, h) per time step, fp32, contiguous, no compile) holding the same
weights, and the speed ratio; (3) dense matmul throughput (fp32 and bf16); (4) FLOPs per training
step (torch.utils.flop_counter), achieved FLOP/s and its share of the matmul throughput of the
dtype in use; (5) peak memory; (6) DataLoader clips/s from raw JPEG frames and from the decoded
cache, against the model's consumption rate. Project and reference steps and the matmul probes are
interleaved round by round, so that all figures come from the same phase of a noisy machine;
each figure is the best round (the median is in the JSON too).

    python bench.py --device cpu --config small --json bench_small_cpu.json
"""

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import cli
import train
from losses import AutoencoderLoss
from model import ConvLSTMAutoencoder, ModelConfig, forward_loss, training_forward


@dataclass
class Preset:
    """Sizes of one benchmark configuration."""

    model: dict = field(default_factory=dict)  # ModelConfig overrides
    batch_size: int = 8
    seq_len: int = 20
    steps: int = 3  # timed rounds (each: one project step, one reference step, matmul probes)
    warmup: int = 1
    matmul_size: int = 2048  # square matmul side for the throughput probe (CPU; 8192 on CUDA)
    n_embryos: int = 16  # synthetic wells for the loader benchmark
    n_frames: int = 40
    frame_size: int = 500  # JPEG side, as in the public Gomez et al. set
    loader_batches: int = 6


PRESETS = {
    # The default (high-quality) model on the clips train.py uses.
    "full": Preset(),
    # The same model on 1/8 of the work per step: finishes in a few minutes on a 2-core CPU.
    "small": Preset(batch_size=2, seq_len=10, steps=5, n_embryos=8, n_frames=30, loader_batches=8),
    # A toy model for the test suite (seconds).
    "tiny": Preset(model=dict(image_size=32, cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=1,
                              decoder_hidden_dim=8, decoder_layers=1, classifier_hidden=(16, 8)),
                   batch_size=2, seq_len=4, steps=2, matmul_size=256, n_embryos=4, n_frames=6,
                   frame_size=64, loader_batches=3),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=str, default="small", choices=tuple(PRESETS),
                        help="full: default model, B=8, T=20, 128 px; small: same model, B=2, T=10; "
                             "tiny: toy model for the tests (default: small)")
    parser.add_argument("--batch_size", type=int, default=None, help="clips per step (default: the config's)")
    parser.add_argument("--seq_len", type=int, default=None, help="frames per clip (default: the config's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed rounds, each one project and one reference step (default: the config's)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default: the config's)")
    cli.add_device_args(parser, compile=True, compile_aliases=("--compile_cell",))  # compile time: in the warm-up
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--skip_loader", action="store_true", help="skip the DataLoader benchmark (default: off)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 = torch's default, one per core (default: 0)")
    cli.add_seed_arg(parser, "weights, inputs and synthetic wells")
    parser.add_argument("--json", type=str, default=None, help="write the results to this JSON file (default: none)")
    return parser


# ---- the plain reference ------------------------------------------------------------------------

class PlainConvLSTM(nn.Module):
    """Textbook ConvLSTM stack: each step convolves cat(x_t, h) once, fp32, zero initial state."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int, num_layers: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cells = nn.ModuleList(
            nn.Conv2d((input_dim if layer == 0 else hidden_dim) + hidden_dim, 4 * hidden_dim, kernel_size,
                      padding=kernel_size // 2)
            for layer in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _, height, width = x.shape  # (B, T, C, H, W)
        layer_input = x
        for conv in self.cells:
            h = x.new_zeros(b, self.hidden_dim, height, width)
            c = x.new_zeros(b, self.hidden_dim, height, width)
            outputs = []
            for step in range(t):
                gates = conv(torch.cat([layer_input[:, step], h], dim=1))  # (B, 4*hid, H, W)
                i, f, o, g = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)  # (B, T, hid, H, W)
        return layer_input


class PlainAutoencoder(nn.Module):
    """The project's architecture written the plain way (no peepholes), for the reference timing."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.peephole:
            raise ValueError("the plain reference has no peepholes; benchmark a config with peephole=False")
        c1, c2, c3 = config.cnn_channels
        hid, dec = config.encoder_hidden_dim, config.decoder_hidden_dim
        half, quarter = max(dec // 2, 1), max(dec // 4, 1)

        def stage(conv):
            return nn.Sequential(conv, nn.GroupNorm(min(8, conv.out_channels), conv.out_channels), nn.ReLU())

        self.frame_encoder = nn.Sequential(*(stage(nn.Conv2d(i, o, 3, stride=2, padding=1, bias=False))
                                             for i, o in ((config.in_channels, c1), (c1, c2), (c2, c3))))
        self.encoder = PlainConvLSTM(c3, hid, config.kernel_size, config.encoder_layers)
        self.decoder = PlainConvLSTM(hid, dec, config.kernel_size, config.decoder_layers)
        self.frame_decoder = nn.Sequential(
            stage(nn.ConvTranspose2d(dec, half, 4, stride=2, padding=1, bias=False)),
            stage(nn.ConvTranspose2d(half, quarter, 4, stride=2, padding=1, bias=False)),
            nn.ConvTranspose2d(quarter, config.in_channels, 4, stride=2, padding=1),
        )
        h1, h2 = config.classifier_hidden
        self.classifier = nn.Sequential(nn.Linear(hid, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                                        nn.Linear(h2, config.num_classes)) if config.use_classifier else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = x.shape[:2]  # (B, T, C, H, W)
        features = self.frame_encoder(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, c3, H/8, W/8)
        z_seq = self.encoder(features)  # (B, T, hid, H/8, W/8)
        hidden_seq = self.decoder(z_seq)  # (B, T, dec, H/8, W/8)
        frames = torch.sigmoid(self.frame_decoder(hidden_seq.flatten(0, 1)))  # (B*T, C, H, W)
        output = {"reconstruction": frames.unflatten(0, (b, t)), "z_seq": z_seq, "z_last": z_seq[:, -1]}
        if self.classifier is not None:
            output["logits"] = self.classifier(output["z_last"].mean(dim=(2, 3)))  # (B, num_classes)
        return output


def reference_state_dict(project_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the project's weights onto PlainAutoencoder: conv over cat(x, h) = [conv_x | conv_h]."""
    state = {}
    for key, value in project_state.items():
        key = key.replace("frame_encoder.layers.", "frame_encoder.").replace("frame_decoder.layers.", "frame_decoder.")
        key = key.replace("classifier.mlp.", "classifier.")
        if ".conv_x." in key:
            cell = key.split(".conv_x.")[0]
            if key.endswith("weight"):
                value = torch.cat([value, project_state[cell + ".conv_h.weight"]], dim=1)
            key = key.replace(".conv_x.", ".")
        elif ".conv_h." in key:
            continue
        state[key] = value.contiguous()
    return state


# ---- measurements --------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (with AMX when present) on Linux."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    return f"{name}, AMX" if " amx_bf16" in info else name


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model, loss_fn, video, labels, amp_dtype, fused_optimizer, forward=forward_loss):
    """train.py's train_step as a closure, as train.py sets it up: AdamW (fused there), its default gradient
    clip, a GradScaler (on for fp16), the forward --compile picked."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_optimizer)
    scaler = torch.amp.GradScaler(video.device.type, enabled=amp_dtype == torch.float16)
    grad_clip = train.get_args_parser().get_default("grad_clip")

    def step():
        train.train_step(model, video, labels, loss_fn, optimizer, scaler, amp_dtype, grad_clip, forward)

    return step


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def count_flops(step) -> int:
    """FLOPs of one call of step (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_probe(device: torch.device, n: int):
    """Closures timing one n x n matmul in fp32 and bf16; each returns GFLOP/s."""
    probes = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        probes[name] = (lambda a=a, b=b: 2 * n ** 3 / timed(lambda: torch.mm(a, b), device) / 1e9)
    return probes


def reset_peak_memory(device: torch.device):
    """Start a new peak: CUDA allocator stats, or the kernel's peak-RSS mark of this process."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass  # no reset possible: the figure is then the peak since the process started


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max_memory_allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def loader_clips_per_s(dataset, batch_size: int, num_workers: int, n_batches: int, pin_memory: bool) -> float:
    """Clips/s of a shuffling DataLoader over n_batches batches (worker start-up not counted)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, pin_memory=pin_memory, drop_last=True)

    def batches():
        epoch = 0
        while True:
            dataset.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = batches()
    next(stream)  # starts the workers
    start = time.perf_counter()
    for _ in range(n_batches):
        next(stream)
    elapsed = time.perf_counter() - start
    stream.close()
    return n_batches * batch_size / elapsed


def benchmark_loader(preset: Preset, batch_size: int, seq_len: int, image_size: int, num_workers: int,
                     pin_memory: bool, seed: int) -> dict[str, float]:
    """Synthetic JPEG wells in a temporary folder: clips/s decoding the JPEGs, and from the cache."""
    from dataset_ivf import IVFSequenceDataset
    from make_synthetic_data import make_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="bench_ivf_") as tmp:
        n_embryos = max(preset.n_embryos, batch_size)
        index_csv = make_synthetic_dataset(Path(tmp) / "data", n_embryos, preset.n_frames, preset.frame_size, seed)
        common = dict(seq_len=seq_len, image_size=image_size, training=True, seed=seed)
        raw = IVFSequenceDataset(index_csv, cache_dir="off", **common)
        cached = IVFSequenceDataset(index_csv, cache_dir=Path(tmp) / "cache", **common)  # decodes once here
        return {
            "raw_jpeg": loader_clips_per_s(raw, batch_size, num_workers, preset.loader_batches, pin_memory),
            "cached": loader_clips_per_s(cached, batch_size, num_workers, preset.loader_batches, pin_memory),
        }


# ---- main ----------------------------------------------------------------------------------------

def settings(args) -> dict:
    """The preset's sizes with the flags on top; InputError for values out of range."""
    preset = PRESETS[args.config]
    picked = {name: getattr(preset, name) if getattr(args, name) is None else getattr(args, name)
              for name in ("batch_size", "seq_len", "steps", "warmup")}
    if min(picked["batch_size"], picked["seq_len"], picked["steps"]) < 1 or \
            min(picked["warmup"], args.num_workers, args.threads) < 0:
        raise cli.InputError("--batch_size, --seq_len and --steps must be >= 1; --warmup, --num_workers, "
                             "--threads >= 0")
    cli.check_seed(args.seed)
    return picked


def measure_steps(config: ModelConfig, device, amp_dtype, args, batch_size: int, seq_len: int, steps: int,
                  warmup: int, matmul_n: int) -> dict:
    """Times, FLOPs and peak memory of the project's step and the plain reference, and the matmul probes."""
    size = config.image_size
    model = ConvLSTMAutoencoder(config).to(device).train()
    reference = PlainAutoencoder(config).to(device).train()
    reference.load_state_dict(reference_state_dict(model.state_dict()))
    video = torch.rand(batch_size, seq_len, config.in_channels, size, size, device=device)  # (B, T, 1, H, W)
    labels = torch.randint(0, config.num_classes, (batch_size,), device=device) if config.use_classifier else None
    loss_fn = AutoencoderLoss(cls_weight=1.0 if config.use_classifier else 0.0)
    with torch.no_grad():  # the two implementations compute the same function (fp32)
        check = video[:2, :3]
        difference = (model(check)["reconstruction"] - reference(check)["reconstruction"]).abs().max().item()
    forward = training_forward(model, args.compile, device)
    step_fns = {"project": make_train_step(model, loss_fn, video, labels, amp_dtype, True, forward),
                "reference": make_train_step(reference, loss_fn, video, labels, None, fused_optimizer=False)}
    peak = {}
    for name, step in step_fns.items():
        reset_peak_memory(device)
        for _ in range(max(warmup, 1)):  # the first step also allocates the optimiser state
            step()
        synchronize(device)
        peak[name] = peak_memory_bytes(device)
    # counted eagerly (the same arithmetic): a compiled graph hides its operations from the counter
    eager_fns = {**step_fns, "project": make_train_step(model, loss_fn, video, labels, amp_dtype, True)}
    flops = {name: count_flops(step) for name, step in eager_fns.items()}
    probes = matmul_probe(device, matmul_n)
    for probe in probes.values():
        probe()  # warm-up
    times = {name: [] for name in step_fns}
    gflops = {name: [] for name in probes}
    for _ in range(steps):  # interleaved, so that every figure sees the same phase of the machine
        for name, step in step_fns.items():
            times[name].append(timed(step, device))
        for name, probe in probes.items():
            gflops[name].append(max(probe() for _ in range(3)))
    return {"times": times, "flops": flops, "peak": peak, "gflops": gflops, "difference": difference}


def step_figures(m: dict, batch_size: int, amp_name: str) -> dict:
    """Per-step figures of the project and the reference, each against its dtype's matmul peak."""
    matmul = {name: max(values) for name, values in m["gflops"].items()}
    project_peak = matmul["bf16"] if amp_name in ("bf16", "fp16") else matmul["fp32"]
    result = {}
    for name, values in m["times"].items():
        best, median = min(values), statistics.median(values)
        dtype_peak = project_peak if name == "project" else matmul["fp32"]
        flops = m["flops"][name]
        result[name] = {
            "step_s": best, "step_s_median": median, "step_s_rounds": values,
            "steps_per_s": 1 / best, "clips_per_s": batch_size / best,
            "flops_per_step": flops, "achieved_gflops": flops / best / 1e9,
            "share_of_matmul": flops / best / 1e9 / dtype_peak, "peak_memory_mb": m["peak"][name] / 2 ** 20,
        }
    result["speedup_vs_reference"] = result["project"]["steps_per_s"] / result["reference"]["steps_per_s"]
    result["speedup_vs_reference_median"] = (result["reference"]["step_s_median"]
                                             / result["project"]["step_s_median"])
    return {"matmul_gflops": matmul, "matmul_gflops_rounds": m["gflops"], **result}


def main(args) -> int:
    s = settings(args)
    device = cli.resolve_device(args.device)
    amp_dtype = cli.resolve_amp_dtype(args.amp, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    preset = PRESETS[args.config]
    config = ModelConfig(**preset.model)
    matmul_n = preset.matmul_size if device.type == "cpu" else max(preset.matmul_size, 8192)
    m = measure_steps(config, device, amp_dtype, args, s["batch_size"], s["seq_len"], s["steps"], s["warmup"],
                      matmul_n)
    amp_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    result = {
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "config": args.config,
        "model_config": asdict(config), **s, "amp": amp_name, "compile": args.compile,
        "reference_max_abs_diff": m["difference"], "matmul_size": matmul_n,
        **step_figures(m, s["batch_size"], amp_name),
    }
    if not args.skip_loader:
        rates = benchmark_loader(preset, s["batch_size"], s["seq_len"], config.image_size, args.num_workers,
                                 device.type == "cuda", args.seed)
        consumption = result["project"]["clips_per_s"]
        result["loader"] = {**{f"{k}_clips_per_s": v for k, v in rates.items()},
                            "model_clips_per_s": consumption, "num_workers": args.num_workers,
                            "frame_size": preset.frame_size,
                            "raw_jpeg_vs_model": rates["raw_jpeg"] / consumption,
                            "cached_vs_model": rates["cached"] / consumption}
    print_table(result)
    if args.json:
        cli.write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


def print_table(r: dict):
    """The figures as a short table."""
    print(f"{r['device_name']} ({r['device']}, {r['threads']} threads), torch {r['torch']}, config {r['config']}: "
          f"B={r['batch_size']} T={r['seq_len']} {r['model_config']['image_size']} px, best of {r['steps']} rounds")
    print(f"{'':28s} {'step s':>8s} {'median':>8s} {'clips/s':>8s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} "
          f"{'of matmul':>9s} {'peak MB':>8s}")
    project = f"project ({r['amp']}, compile {r['compile']})"
    for name, label in (("project", project), ("reference", "plain reference (fp32)")):
        p = r[name]
        print(f"{label:28s} {p['step_s']:8.3f} {p['step_s_median']:8.3f} {p['clips_per_s']:8.2f} "
              f"{p['flops_per_step'] / 1e9:11.1f} {p['achieved_gflops']:8.1f} {p['share_of_matmul']:9.1%} "
              f"{p['peak_memory_mb']:8.0f}")
    print(f"speed-up over the reference: {r['speedup_vs_reference']:.2f}x (best), "
          f"{r['speedup_vs_reference_median']:.2f}x (median); outputs agree to {r['reference_max_abs_diff']:.1e}")
    mm = r["matmul_gflops"]
    print(f"matmul {r['matmul_size']}^2: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s")
    if "loader" in r:
        ld = r["loader"]
        print(f"loader ({ld['num_workers']} workers, {ld['frame_size']} px JPEGs): "
              f"raw {ld['raw_jpeg_clips_per_s']:.1f} clips/s ({ld['raw_jpeg_vs_model']:.1f}x the model), "
              f"cached {ld['cached_clips_per_s']:.1f} clips/s "
              f"({ld['cached_vs_model']:.1f}x); model consumes {ld['model_clips_per_s']:.2f} clips/s")


if __name__ == "__main__":
    sys.exit(cli.run_main("bench.py", main, get_args_parser().parse_args()))
