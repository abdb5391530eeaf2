"""Benchmark of the training step, FLOP utilisation, peak memory and the data loader, in one process.

Measures, in one run: (1) training steps/s and clips/s of the project's model (train.py's train_step: the loss
the flags give, as train.py builds it, backward, AdamW step) under --amp and --compile; (2) the same for a plain
reference written here (one convolution over cat(x_t, h) per step, fp32, no compile) holding the same weights, and
the speed ratio; (3) matmul throughput (fp32, bf16) of a square matmul and of the model's own gate GEMM
shapes; (4) FLOPs per step (torch.utils.flop_counter), achieved FLOP/s and its share of the best matmul
of the dtype in use; (5) peak memory; (6) DataLoader clips/s from raw JPEGs and from the decoded cache,
against the model's consumption. With --extraction instead: frames/s of trajectory extraction, one
recording at a time in fp32 against side by side under --amp. Steps and probes are interleaved round
by round, so that all figures come from the same phase of a noisy machine; each figure is the best
round (the median is in the JSON too).

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
from torch.utils.flop_counter import FlopCounterMode

import cli
import train
from bench_reference import PlainAutoencoder, reference_state_dict
from dataset_ivf import IVFSequenceDataset
from frames_io import PHASES
from losses import AutoencoderLoss
from model import ConvLSTMAutoencoder, ModelConfig, add_model_args, config_from_args, forward_loss, training_forward


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
    cli.add_num_workers_arg(parser)
    parser.add_argument("--skip_loader", action="store_true", help="skip the DataLoader benchmark (default: off)")
    parser.add_argument("--extraction", action="store_true",
                        help="measure trajectory extraction instead of training: --batch_size recordings of 3-5 x "
                             "--seq_len frames through the model and an untrained control, one at a time in fp32 "
                             "(the old loop) against side by side under --amp (default: off)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 = torch's default, one per core (default: 0)")
    cli.add_seed_arg(parser, "weights, inputs and synthetic wells")
    parser.add_argument("--json", type=str, default=None, help="write the results to this JSON file (default: none)")
    add_model_args(parser, sizes=False)  # the parts and objectives train.py would train with, on the preset's sizes
    cli.add_loss_args(parser.add_argument_group("loss"))
    return parser


# ---- measurements --------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with its bf16 matrix units (AMX-BF16, AVX512-BF16) on Linux."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    units = [label for flag, label in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return ", ".join([name, *units])


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model, loss_fn, batch, amp_dtype, fused_optimizer, forward=forward_loss):
    """train.py's train_step on a batch dict as a closure, as train.py sets it up: AdamW (fused there), its default
    gradient clip, a GradScaler (on for fp16), the forward --compile picked."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_optimizer)
    scaler = torch.amp.GradScaler(batch["video"].device.type, enabled=amp_dtype == torch.float16)
    grad_clip = train.get_args_parser().get_default("grad_clip")

    def step():
        train.train_step(model, batch, loss_fn, optimizer, scaler, amp_dtype, grad_clip, forward)

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


def gate_gemm_shapes(config: ModelConfig, batch_size: int, seq_len: int, max_rows: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the ConvLSTM gate convolutions as im2col GEMMs: the recurrent conv_h of every step
    (M = B*h*w, K = hid*k*k, N = 4*hid) and the batched conv_x of each layer (M = B*T*h*w, at most max_rows)."""
    rows, k2 = (config.image_size // 8) ** 2, config.kernel_size ** 2
    shapes = set()
    for c_in, hid in ((config.cnn_channels[-1], config.encoder_hidden_dim),
                      (config.encoder_hidden_dim, config.decoder_hidden_dim)):
        shapes.add((batch_size * rows, hid * k2, 4 * hid))
        for channels in (c_in, hid):  # first layer, later layers
            shapes.add((min(batch_size * seq_len * rows, max_rows), channels * k2, 4 * hid))
    return sorted(shapes)


def matmul_probe(device: torch.device, n: int, shapes: list[tuple[int, int, int]]):
    """Closures timing an n x n x n matmul and the model's own GEMM shapes, in fp32 and bf16; each returns
    GFLOP/s. Small shapes repeat within one timing on a GPU, so that launch and sync do not dominate."""
    probes = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for m, k, cols in [(n, n, n), *shapes]:
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, cols, device=device).to(dtype)
            flops = 2 * m * k * cols
            reps = max(1, int(2e12 // flops)) if device.type == "cuda" else 1

            def probe(a=a, b=b, flops=flops, reps=reps):
                return reps * flops / timed(lambda: [torch.mm(a, b) for _ in range(reps)], device) / 1e9

            probes[f"{name} {m}x{k}x{cols}"] = probe
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
    if min(picked["batch_size"], picked["seq_len"], picked["steps"]) < 1 or min(picked["warmup"], args.threads) < 0:
        raise cli.InputError("--batch_size, --seq_len and --steps must be >= 1; --warmup and --threads >= 0")
    cli.check_seed(args.seed)
    return picked


def synthetic_batch(config: ModelConfig, batch_size: int, seq_len: int, device, views: bool) -> dict:
    """A training batch of random clips with every field a loss part reads (a second view when views)."""
    def clips():
        return torch.rand(batch_size, seq_len, config.in_channels, config.image_size, config.image_size,
                          device=device)  # (B, T, 1, H, W)

    steps = torch.arange(seq_len, device=device).expand(batch_size, -1)  # (B, T)
    batch = {"video": clips(), "label": torch.randint(0, config.num_classes, (batch_size,), device=device),
             "frame_indices": 5 * steps, "recording_frames": torch.full((batch_size,), 5 * seq_len, device=device),
             "phase_index": torch.randint(-1, len(PHASES), (batch_size, seq_len), device=device)}
    return {**batch, "view": clips()} if views else batch


def measure_steps(config: ModelConfig, device, amp_dtype, args, batch_size: int, seq_len: int, steps: int,
                  warmup: int, matmul_n: int) -> dict:
    """Times, FLOPs and peak memory of the project's step and the plain reference (the loss of the flags, as
    train.py builds it), and the matmul probes."""
    model = ConvLSTMAutoencoder(config).to(device).train()
    reference = PlainAutoencoder(config).to(device).train()
    reference.load_state_dict(reference_state_dict(model.state_dict()))
    batch = synthetic_batch(config, batch_size, seq_len, device, views=args.contrast_weight > 0)
    loss_fn = AutoencoderLoss.from_args(args, config)
    with torch.no_grad():  # the two implementations compute the same function (fp32)
        check = batch["video"][:2, :3]
        difference = (model(check)["reconstruction"] - reference(check)["reconstruction"]).abs().max().item()
    forward = training_forward(model, args.compile, device)
    step_fns = {"project": make_train_step(model, loss_fn, batch, amp_dtype, True, forward),
                "reference": make_train_step(reference, loss_fn, batch, None, fused_optimizer=False)}
    peak = {}
    for name, step in step_fns.items():
        reset_peak_memory(device)
        for _ in range(max(warmup, 1)):  # the first step also allocates the optimiser state
            step()
        synchronize(device)
        peak[name] = peak_memory_bytes(device)
    # counted eagerly (the same arithmetic): a compiled graph hides its operations from the counter
    eager_fns = {**step_fns, "project": make_train_step(model, loss_fn, batch, amp_dtype, True)}
    flops = {name: count_flops(step) for name, step in eager_fns.items()}
    probes = matmul_probe(device, matmul_n, gate_gemm_shapes(config, batch_size, seq_len, max_rows=matmul_n * 4))
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
    """Per-step figures of the project and the reference, each against its dtype's matmul peak (the best
    of the square matmul and the model's own GEMM shapes)."""
    by_shape = {name: max(values) for name, values in m["gflops"].items()}
    matmul = {dtype: max(v for k, v in by_shape.items() if k.split()[0] == dtype) for dtype in ("fp32", "bf16")}
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
    return {"matmul_gflops": matmul, "matmul_gflops_by_shape": by_shape, "matmul_gflops_rounds": m["gflops"],
            **result}


def measure_extraction(config: ModelConfig, device, amp_dtype, n_recordings: int, seq_len: int, steps: int,
                       warmup: int) -> dict:
    """Frames/s of extract_latents.py's trajectory encoding (a model and its control, each frame through both):
    one recording at a time in fp32 against encode_trajectories' side-by-side batch under amp_dtype."""
    import extract_latents
    import latent_encoding

    chunk_len = extract_latents.CHUNK_LEN
    models = [ConvLSTMAutoencoder(config).to(device).eval() for _ in range(2)]  # trained stand-in, control
    lengths = torch.linspace(3 * seq_len, 5 * seq_len, n_recordings).long().tolist()
    recordings = [torch.rand(n, config.in_channels, config.image_size, config.image_size) for n in lengths]
    paths = {
        "one_at_a_time_fp32": lambda: [latent_encoding.encode_trajectories(m, [r], chunk_len)[0][0]
                                       for m in models for r in recordings],
        "batched": lambda: [z for m in models for z, _ in
                            latent_encoding.encode_trajectories(m, recordings, chunk_len, amp_dtype=amp_dtype)],
    }
    times, latents = {name: [] for name in paths}, {}
    for round_ in range(warmup + steps):
        for name, path in paths.items():
            seconds = timed(lambda name=name, path=path: latents.__setitem__(name, path()), device)
            if round_ >= warmup:
                times[name].append(seconds)
    result = {name: {"s": min(t), "s_median": statistics.median(t), "s_rounds": t,
                     "frames_per_s": sum(lengths) / min(t)} for name, t in times.items()}
    pairs = list(zip(latents["batched"], latents["one_at_a_time_fp32"], strict=True))
    return {**result, "recording_lengths": lengths, "chunk_len": chunk_len, "frames": sum(lengths),
            "speedup": result["one_at_a_time_fp32"]["s"] / result["batched"]["s"],
            "max_abs_diff": max((a - b).abs().max().item() for a, b in pairs),
            "max_abs_latent": max(b.abs().max().item() for _, b in pairs)}


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
    config = config_from_args(args, preset.model)
    matmul_n = preset.matmul_size if device.type == "cpu" else max(preset.matmul_size, 8192)
    amp_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    result = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "config": args.config, "model_config": asdict(config), **s,
              "amp": amp_name}
    if args.extraction:
        result["extraction"] = measure_extraction(config, device, amp_dtype, s["batch_size"], s["seq_len"],
                                                  s["steps"], s["warmup"])
    else:
        m = measure_steps(config, device, amp_dtype, args, s["batch_size"], s["seq_len"], s["steps"], s["warmup"],
                          matmul_n)
        result.update(compile=args.compile, reference_max_abs_diff=m["difference"], matmul_size=matmul_n,
                      **step_figures(m, s["batch_size"], amp_name))
    if not (args.skip_loader or args.extraction):
        workers = cli.resolve_num_workers(args.num_workers, device.type)
        rates = benchmark_loader(preset, s["batch_size"], s["seq_len"], config.image_size, workers,
                                 device.type == "cuda", args.seed)
        consumption = result["project"]["clips_per_s"]
        result["loader"] = {**{f"{k}_clips_per_s": v for k, v in rates.items()},
                            "model_clips_per_s": consumption, "num_workers": workers,
                            "frame_size": preset.frame_size,
                            "raw_jpeg_vs_model": rates["raw_jpeg"] / consumption,
                            "cached_vs_model": rates["cached"] / consumption,
                            # train.py reads the cache after the first epoch: the cached rate is the one it gets
                            "limited_by": "the loader" if rates["cached"] < consumption else "the step"}
    print_table(result)
    if args.json:
        cli.write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    return 0


def print_table(r: dict):
    """The figures as a short table."""
    if "extraction" in r:
        e = r["extraction"]
        print(f"{r['device_name']} ({r['device']}, {r['threads']} threads): {r['batch_size']} recordings, "
              f"{e['frames']} frames, chunks of {e['chunk_len']}, model + control: one at a time in fp32 "
              f"{e['one_at_a_time_fp32']['frames_per_s']:.1f} frames/s, side by side in {r['amp']} "
              f"{e['batched']['frames_per_s']:.1f} frames/s ({e['speedup']:.2f}x); latents differ by at most "
              f"{e['max_abs_diff']:.1e} (largest {e['max_abs_latent']:.2f})")
        return
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
    shapes = ", ".join(f"{k} {v:.0f}" for k, v in r["matmul_gflops_by_shape"].items())
    print(f"matmul peak (best of {r['matmul_size']}^2 and the gate GEMMs M x K x N): fp32 {mm['fp32']:.0f} GFLOP/s, "
          f"bf16 {mm['bf16']:.0f} GFLOP/s; by shape: {shapes}")
    if "loader" in r:
        ld = r["loader"]
        print(f"loader ({ld['num_workers']} workers, {ld['frame_size']} px JPEGs): "
              f"raw {ld['raw_jpeg_clips_per_s']:.1f} clips/s ({ld['raw_jpeg_vs_model']:.1f}x the model), "
              f"cached {ld['cached_clips_per_s']:.1f} clips/s "
              f"({ld['cached_vs_model']:.1f}x); model consumes {ld['model_clips_per_s']:.2f} clips/s: "
              f"{ld['limited_by']} limits")


if __name__ == "__main__":
    sys.exit(cli.run_main("bench.py", main, get_args_parser().parse_args()))
