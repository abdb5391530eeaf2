"""Encode index.csv rows with a trained checkpoint and write latents plus metadata for analyze_latents.py.

The model is rebuilt from the checkpoint's own config; seq_len, sampling and normalisation default to the
checkpoint's training arguments. Only the encoder runs. Latents are pooled over space to one vector per frame:
the channel means (`--pool mean`, encoder_hidden_dim values) or the means then the standard deviations
(`--pool mean_std`, twice as many), which keep how spread out over the well each channel is.

`--mode clips` writes `OUT/clips/` (N = rows of index.csv, one evaluation clip each, T = seq_len):
- `z_last_pooled.npy` (N, P), `z_seq_pooled.npy` (N, T, P) (P = C, or 2C with `--pool mean_std`),
  `probs.npy` (N, num_classes) when the model has a classifier; with `--save_z_seq` also the unpooled
  `z_last.npy` (N, C, h, w) and `z_seq.npy` (N, T, C, h, w); all float32, written batch by batch into memory-mapped
  .npy files;
- `metadata.csv`: clip, cell_id, label, frame_indices / hours / phase (`|`-joined), then every other
  column of the index row (patient_id, split, ...); `info.json`: checkpoint, settings and timing.

`--mode trajectory` writes `OUT/trajectories/`: every `--frame_step`-th frame of each whole recording, streamed
through the encoder `--chunk_len` frames at a time with the recurrent state carried over (identical to one
pass), `--batch_size` sequences side by side, one file per embryo as it goes, so memory stays bounded by
`--batch_size` recordings. By default the state runs through every frame (`--state_stride 1`), so consecutive
latents come from consecutive steps of one state (what the speed curves, T-PHATE and the outliers read). A model
trained on clips of seq_len frames spread over a recording of n frames saw frames K = n / seq_len apart;
`--state_stride auto` encodes the recording as K interleaved sequences (frames j, j + K, ... for each j < K), each
frame once, by a state that steps as in training (what a per-frame readout such as a `--phase_weight` head needs;
consecutive latents then come from different sequences). Both modes run under the autocast the model was
trained with (the checkpoint's --amp, on this device):
- `<k>_<cell_id>.npz` with `z` (n, P), `frame_indices` (n,), `hours` (n,) (NaN unknown), `phase` (n,)
  ('' unknown), and with `--save_z_seq` `z_full` (n, C, h, w); unless `--no_controls`, the controls the
  analysis reports every probe against: `z_untrained` (n, P), the same frames through the run's model at its
  initial weights (same config, the training seed), and `pixels` (n, 256), the frames area-averaged to 16 x 16;
- `metadata.csv` (file, cell_id, label, n_frames, total_frames, frame_step, state_stride, index columns) and
  `info.json`.
Frames of a trajectory are normalised over the whole recording (training normalised each clip).

Each row's `split` is that of the run that trained the checkpoint (stored in it by train.py; for older checkpoints
its index.csv split again with its seed and val_fraction): train, val, or unseen for rows the run never saw (test
where the index says so). A subfolder is written whole (output_folder.py: a staging folder beside it, swapped in at the
end, locked while a run lives) and sealed by info.json (latents_folder.py: the checkpoint, a sha256 of its
weights, the extraction's id, every file), which the analysis checks. Exit codes: cli.py's table; a stop signal
leaves the subfolder as it was (85, Ctrl-C 130).
"""

import argparse
import math
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

import cli
import latents_folder
from checkpoint import weights_digest
from cli import CLIPS_DIR, LATENT_KEY, METADATA_CSV, PIXELS_KEY, TRAJECTORY_DIR, UNTRAINED_KEY, InputError
from dataset_ivf import INHERITED_FIELDS, DataConfig, IVFSequenceDataset, ShieldedLoader, add_data_args
from frames_io import PHASES
from index_csv import split_of
from latent_encoding import (
    PIXEL_SIDE,
    POOLS,
    autocast,
    encode_interleaved,
    inference_amp,
    model_device,
    pixel_features,
    pool_space,
    pooled_width,
    state_stride,
    untrained_model,
)
from model import ConvLSTMAutoencoder, load_model
from output_folder import OutputFolder

SUBFOLDERS = {"clips": CLIPS_DIR, "trajectory": TRAJECTORY_DIR}  # --mode -> the subfolder of --out it writes
FRAME_STEP, CHUNK_LEN, STATE_STRIDE = 1, 64, 1  # trajectory mode's defaults
IDLE_FLAGS = {"clips": ("frame_step", "chunk_len", "state_stride", "no_controls"),
              "trajectory": ("seq_len", "sampling")}


def _joined(values) -> str:
    return "|".join(str(v) for v in values)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "embryo"


def _metadata_row(fixed: dict, extra: dict) -> dict:
    """Fixed columns first, then the index row's other columns (fixed names win)."""
    return {**fixed, **{k: v for k, v in extra.items() if k not in fixed}}


def build_dataset(args: argparse.Namespace, checkpoint: dict, image_size: int) -> IVFSequenceDataset:
    """The evaluation dataset: the training run's DataConfig with the flags given here on top, each row labelled
    with the split of the run that trained the checkpoint (label_splits). The run's cache folder and annotations
    may be cluster paths: the cache is inherited only as on/off, the annotations only when that folder exists here."""
    config = DataConfig.from_checkpoint(checkpoint)
    given = {k: getattr(args, k) for k in INHERITED_FIELDS if getattr(args, k) is not None}
    given.setdefault("cache_dir", "off" if str(config.cache_dir).lower() in ("none", "off", "") else "auto")
    if "annotations_dir" not in given and not (config.annotations_dir and Path(config.annotations_dir).is_dir()):
        given["annotations_dir"] = None
    dataset = IVFSequenceDataset(args.index_csv, config, split=None, training=False, augment=False,
                                 skip_bad=args.skip_bad, image_size=image_size, **given)
    label_splits(dataset, *run_split(checkpoint), args.split)
    return dataset


def run_split(checkpoint: dict) -> tuple[dict[str, str] | None, str]:
    """Embryo id -> split of the run that trained the checkpoint, and where it comes from: the checkpoint (train.py
    stores it), else the run's index.csv split again with the run's seed and val_fraction; None when neither is here."""
    if isinstance(checkpoint.get("split"), dict):
        return checkpoint["split"], "the checkpoint's run"
    config, index = DataConfig.from_checkpoint(checkpoint), (checkpoint.get("args") or {}).get("index_csv")
    if index and Path(index).is_file():
        try:
            return (split_of(Path(index), config.val_fraction, config.seed),
                    f"{index} split with the run's seed {config.seed} and val_fraction {config.val_fraction}")
        except InputError:
            pass
    return None, "unknown: the checkpoint predates stored splits and its index.csv cannot be read here"


def label_splits(dataset: IVFSequenceDataset, split: dict[str, str] | None, source: str, wanted: str):
    """Each row's split: the run's (train or val), else test where the index says so, else unseen ("unknown" for
    every row when the run's split is); then only the rows of --split `wanted` ("all": every row)."""
    for row in dataset.rows:
        row.split = "unknown" if split is None else split.get(row.cell_id, "test" if row.split == "test" else "unseen")
    dataset.split_source = source
    if wanted != "all":
        dataset.rows = [row for row in dataset.rows if row.split == wanted]
        if not dataset.rows:
            raise InputError(f"--split {wanted}: no row of {dataset.index_csv} is in that split of the run that "
                             f"trained the checkpoint ({source}); use --split all")


def allocated_npy(path: Path, shape: tuple) -> np.memmap:
    """A float32 .npy of `shape` memory-mapped for writing, its blocks allocated at once: a full disk is an OSError
    here (exit 74), not a SIGBUS when a page of it is written later."""
    array = open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array


def extract_clips(model: ConvLSTMAutoencoder, dataset: IVFSequenceDataset, folder: Path, args,
                  amp_dtype: torch.dtype | None = None) -> dict:
    """One evaluation clip per row -> pooled z_last / z_seq, probabilities and metadata in folder."""
    config = model.config
    n, t, c, hw = len(dataset), dataset.seq_len, config.encoder_hidden_dim, config.image_size // 8
    width = pooled_width(config, args.pool)
    arrays = {"z_last_pooled": (n, width), "z_seq_pooled": (n, t, width)}
    if config.use_classifier:
        arrays["probs"] = (n, config.num_classes)
    if args.save_z_seq:
        arrays.update(z_last=(n, c, hw, hw), z_seq=(n, t, c, hw, hw))
    files = {name: allocated_npy(folder / f"{name}.npy", shape) for name, shape in arrays.items()}
    device = model_device(model)
    loader = ShieldedLoader(dataset, batch_size=args.batch_size, shuffle=False, pin_memory=device.type == "cuda",
                            num_workers=cli.resolve_num_workers(args.num_workers, device.type))
    rows, start, encode_s = [], 0, 0.0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="clips", unit="batch", disable=None):
            x = batch["video"].to(device, non_blocking=True)  # (B, T, 1, H, W)
            tick = time.perf_counter()
            with autocast(x.device, amp_dtype):
                z_seq, _ = model.encode(x)  # (B, T, C, h, w)
            z_seq = z_seq.float()
            z_last = z_seq[:, -1]  # (B, C, h, w)
            outputs = {"z_last_pooled": pool_space(z_last, args.pool), "z_seq_pooled": pool_space(z_seq, args.pool)}
            if config.use_classifier:
                outputs["probs"] = torch.softmax(model.classify(z_last).float(), dim=1)  # (B, K)
            if args.save_z_seq:
                outputs.update(z_last=z_last, z_seq=z_seq)
            outputs = {k: v.cpu().numpy() for k, v in outputs.items()}
            encode_s += time.perf_counter() - tick
            b = x.shape[0]
            for name, value in outputs.items():
                files[name][start:start + b] = value
            for j in range(b):
                fixed = {"clip": start + j, "cell_id": batch["cell_id"][j], "label": int(batch["label"][j]),
                         "frame_indices": _joined(batch["frame_indices"][j].tolist())}
                if "hours" in batch:
                    fixed["hours"] = _joined(round(h, 4) for h in batch["hours"][j].tolist())
                    fixed["phase"] = _joined(step[j] for step in batch["phase"])
                rows.append(_metadata_row(fixed, dataset.metadata(start + j)))
            start += b
    for array in files.values():
        array.flush()
    cli.write_bytes(folder / METADATA_CSV, pd.DataFrame(rows).to_csv(index=False).encode())
    return {"n_clips": n, "seq_len": t, "arrays": {k: list(v) for k, v in arrays.items()},
            "frames_encoded": n * t, "encode_s": encode_s}


def extract_trajectories(model: ConvLSTMAutoencoder, dataset: IVFSequenceDataset, folder: Path, args,
                         control: ConvLSTMAutoencoder | None = None, amp_dtype: torch.dtype | None = None,
                         extraction_id: str = "") -> dict:
    """Whole recordings, every frame_step-th frame, one .npz per embryo in folder (written as it goes, each holding
    extraction_id). --batch_size recordings are encoded side by side (encode_trajectories), under the run's
    autocast."""
    rows, seen, skipped, duplicates, group, encode_s = [], set(), [], 0, [], 0.0
    for i in tqdm(range(len(dataset)), desc="trajectories", unit="embryo", disable=None):
        cell_id = str(dataset.metadata(i)["cell_id"])
        if dataset.recording(i) in seen:  # clip-row index.csv: several rows of one recording
            duplicates += 1
            continue
        seen.add(dataset.recording(i))
        positions = np.arange(0, dataset.num_frames(i), args.frame_step, dtype=np.int64)
        try:
            group.append((i, positions, torch.from_numpy(dataset.load_frames(i, positions))))  # (n, 1, H, W)
        except InputError as error:
            if not args.skip_bad:
                raise
            tqdm.write(f"skipping {cell_id}: {error}", file=sys.stderr)
            skipped.append(cell_id)
        if len(group) == args.batch_size:
            encode_s += _encode_and_write(model, control, group, dataset, folder, rows, args, amp_dtype,
                                          extraction_id)
            group = []
    if group:
        encode_s += _encode_and_write(model, control, group, dataset, folder, rows, args, amp_dtype,
                                      extraction_id)
    if not rows:
        raise InputError(f"{args.index_csv}: no recording could be read (skipped {len(skipped)})")
    cli.write_bytes(folder / METADATA_CSV, pd.DataFrame(rows).to_csv(index=False).encode())
    return {"n_embryos": len(rows), "skipped": skipped, "duplicate_rows": duplicates, "frame_step": args.frame_step,
            "state_stride": args.state_stride, "chunk_len": args.chunk_len, "recordings_per_batch": args.batch_size,
            "frames_encoded": sum(row["n_frames"] for row in rows),
            "encode_s": encode_s}


def _encode_and_write(model, control, group: list, dataset, folder: Path, rows: list, args, amp_dtype,
                      extraction_id: str) -> float:
    """Encode a group of loaded recordings [(row, positions, frames)] and write one .npz each; returns the
    seconds spent encoding."""
    tick = time.perf_counter()
    recordings = [frames for _, _, frames in group]
    strides = [state_stride(args.state_stride, len(positions), dataset) for _, positions, _ in group]
    latents = encode_interleaved(model, recordings, strides, args.batch_size, args.chunk_len, args.save_z_seq,
                                 amp_dtype, args.pool)
    untrained = None if control is None else encode_interleaved(control, recordings, strides, args.batch_size,
                                                                args.chunk_len, amp_dtype=amp_dtype, pool=args.pool)
    seconds = time.perf_counter() - tick
    for k, (i, positions, frames) in enumerate(group):
        meta = dataset.metadata(i)
        hours, phase = dataset.annotations(i, positions)
        name = f"{len(rows):05d}_{_safe_name(str(meta['cell_id']))}.npz"
        pooled, full = latents[k]
        arrays = {LATENT_KEY: pooled.numpy(), "frame_indices": positions, "hours": hours.astype(np.float32),
                  "phase": np.asarray(phase, dtype=str)}  # str, not object: loads without pickle
        if untrained is not None:
            arrays[UNTRAINED_KEY] = untrained[k][0].numpy()
            arrays[PIXELS_KEY] = pixel_features(frames)
        if full is not None:
            arrays["z_full"] = full.numpy()
        arrays[latents_folder.EXTRACTION_KEY] = np.asarray(extraction_id)
        cli.atomic_write(folder / name, lambda f, arrays=arrays: np.savez(f, **arrays))
        rows.append(_metadata_row({"file": name, "cell_id": str(meta["cell_id"]), "label": int(meta["label"]),
                                   "n_frames": len(positions), "total_frames": dataset.num_frames(i),
                                   "frame_step": args.frame_step, "state_stride": strides[k]}, meta))
    return seconds


NPY_HEADER = 128  # bytes before the data of a .npy file, and of each array inside an .npz
ZIP_ENTRY = 120  # bytes of zip headers (local and central directory) around each array of an .npz
INFO_BYTES, FILE_ENTRY = 1536, 150  # info.json, about, and its entry for each file (name, size, sha256)


def estimate_output_bytes(dataset: IVFSequenceDataset, config, args: argparse.Namespace) -> int:
    """Bytes that extraction will write for this dataset and these flags: float32 arrays, their headers,
    metadata.csv and info.json (latents_folder.seal). Known before anything is encoded (frame counts come from the
    dataset)."""
    c, hw, width = config.encoder_hidden_dim, config.image_size // 8, pooled_width(config, args.pool)
    meta = sum(len(",".join(map(str, dataset.metadata(i).values()))) + 1 for i in range(len(dataset)))  # csv row
    if args.mode == "clips":
        n, t = len(dataset), dataset.seq_len
        floats = width + t * width + (config.num_classes if config.use_classifier else 0)
        floats += (c + t * c) * hw * hw if args.save_z_seq else 0
        n_arrays = 2 + config.use_classifier + 2 * args.save_z_seq
        per_frame_text = len(str(max(dataset.num_frames(i) for i in range(n)))) + 1
        per_frame_text += 13 if dataset.has_annotations else 0  # hours (round 4) and phase, '|'-joined
        meta += n * (8 + t * per_frame_text)  # clip number, frame_indices[, hours, phase]
        return 4 * n * floats + NPY_HEADER * n_arrays + meta + INFO_BYTES + FILE_ENTRY * (n_arrays + 1)
    recordings = {dataset.recording(i): dataset.num_frames(i) for i in range(len(dataset))}
    frames = sum(math.ceil(total / args.frame_step) for total in recordings.values())
    phase_bytes = 4 * (max(map(len, PHASES)) if dataset.has_annotations else 1)  # numpy unicode: 4 bytes a char
    per_frame = 4 * width + 8 + 4 + phase_bytes  # z, frame_indices (int64), hours, phase
    per_frame += 0 if args.no_controls else 4 * (width + PIXEL_SIDE ** 2)  # z_untrained, pixels
    per_frame += 4 * c * hw * hw if args.save_z_seq else 0  # z_full
    n_arrays = 5 + 2 * (not args.no_controls) + args.save_z_seq  # with the extraction id (32 characters)
    meta += 52 * len(recordings)  # file name, n_frames, total_frames, frame_step, state_stride
    info = INFO_BYTES + FILE_ENTRY + FILE_ENTRY // 2 * len(recordings)  # a trajectory's entry has no sha256
    return frames * per_frame + len(recordings) * (n_arrays * (NPY_HEADER + ZIP_ENTRY) + 4 * 32) + meta + info


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""


def check_free_space(n_bytes: int, target: Path, args: argparse.Namespace):
    """Print the estimate; InputError (exit 2, nothing written) when it exceeds the free space where target goes
    (beside the previous output, which stays until the new one is whole)."""
    folder = target.absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    print(f"extract_latents.py: about {_size(n_bytes)} to write into {target} ({_size(free)} free in {folder})",
          flush=True)
    if n_bytes > free:
        raise InputError(f"the output is estimated at {_size(n_bytes)} but {folder} has {_size(free)} free "
                         f"(--out {args.out}); free some space, choose another --out, raise --frame_step or drop "
                         f"--save_z_seq")


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="extract_latents.py", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=str, required=True,
                        help="checkpoint written by train.py (best.pt, last.pt, ...) (required; no default)")
    parser.add_argument("--out", type=str, required=True,
                        help="output folder; clips/ or trajectories/ inside it is replaced whole, once the new one "
                             "is written (required)")
    parser.add_argument("--mode", type=str, default="clips", choices=["clips", "trajectory"],
                        help="clips: one evaluation clip per row; trajectory: whole recordings (default: clips)")
    parser.add_argument("--frame_step", "--stride", type=int, default=None, dest="frame_step",
                        help="trajectory mode only: encode every K-th frame of each recording (--stride is the old "
                             f"name) (default: {FRAME_STEP})")
    parser.add_argument("--chunk_len", type=int, default=None,
                        help="trajectory mode only: frames per encoder call, state carried between calls (default: "
                             f"{CHUNK_LEN})")
    parser.add_argument("--state_stride", type=cli.auto_or_count(1), default=None,
                        help="trajectory mode only: frames between two steps of the encoder state; 1 = one pass "
                             "through every frame; with K > 1 the frames j, j+K, j+2K, ... of a recording are "
                             "encoded as one sequence from the initial state, for each j < K (every frame once); "
                             "auto = the training clips' spacing, frames / seq_len (1 for --sampling window), for "
                             f"per-frame readouts such as a --phase_weight head (default: {STATE_STRIDE})")
    parser.add_argument("--save_z_seq", action="store_true",
                        help="also save unpooled latents (clips: z_last, z_seq; trajectory: z_full); large "
                             "(default: off)")
    parser.add_argument("--pool", type=str, default="mean", choices=POOLS,
                        help="spatial summary of each frame's latent: mean (encoder_hidden_dim channel means) or "
                             "mean_std (the means, then each channel's standard deviation over space) "
                             "(default: %(default)s)")
    parser.add_argument("--no_controls", action="store_true",
                        help="trajectory mode only: skip the controls written beside the latents (the same frames "
                             "through an untrained model of the same config, and their raw pixels) (default: off)")
    parser.add_argument("--batch_size", type=int, default=16,
                        help="clips per batch (clips mode), or recordings encoded side by side, each with its own "
                             "state (trajectory mode) (default: 16)")
    parser.add_argument("--split", type=str, default="all", choices=("all",) + latents_folder.ROW_SPLITS,
                        help="rows to encode, by the split of the run that trained the checkpoint (unseen: rows it "
                             "never saw; test: those of them the index marks test) (default: all)")
    cli.add_device_args(parser, amp=False)
    add_data_args(parser, from_checkpoint=True)
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Flag ranges; a flag that does nothing in this --mode is refused; trajectory mode's defaults filled in."""
    values = {flag: getattr(args, flag) for flag in IDLE_FLAGS[args.mode]}
    idle = [flag for flag, value in values.items() if value is not None and value is not False]  # 0 is given
    if idle:
        raise InputError(f"--{idle[0]} does nothing in --mode {args.mode}; drop it")
    if args.mode == "trajectory":
        args.frame_step = FRAME_STEP if args.frame_step is None else args.frame_step
        args.chunk_len = CHUNK_LEN if args.chunk_len is None else args.chunk_len
        args.state_stride = STATE_STRIDE if args.state_stride is None else args.state_stride
    cli.check_numbers(args, {"frame_step": 1, "chunk_len": 1, "batch_size": 1, "seq_len": 1})


def main(args: argparse.Namespace, stop: cli.StopSignal | None = None) -> dict:
    """Extract latents as asked into --out's subfolder of the mode, written whole (OutputFolder: a stop signal, `stop`,
    or an error leaves it as it was); returns the info dict also written to info.json."""
    check_args(args)
    subfolder = SUBFOLDERS[args.mode]
    output = OutputFolder(Path(args.out) / subfolder, "--out", "extraction", latents_folder.PATTERNS[subfolder],
                          stop).check()
    device = cli.resolve_device(args.device)
    model, checkpoint = load_model(args.checkpoint, map_location=device)
    amp_dtype = inference_amp(checkpoint, device)
    dataset = build_dataset(args, checkpoint, model.config.image_size)
    check_free_space(estimate_output_bytes(dataset, model.config, args), output.target, args)
    extraction_id, tick = uuid.uuid4().hex, time.perf_counter()
    with output as folder:
        if args.mode == "clips":
            result = extract_clips(model, dataset, folder, args, amp_dtype)
        else:
            control = None if args.no_controls else untrained_model(checkpoint, device)
            result = extract_trajectories(model, dataset, folder, args, control, amp_dtype, extraction_id)
        seconds = time.perf_counter() - tick
        info = latents_folder.seal(folder, {
            latents_folder.EXTRACTION_KEY: extraction_id, "mode": args.mode,
            "checkpoint": str(Path(args.checkpoint).resolve()),
            "weights_sha256": weights_digest(checkpoint["model_state_dict"]),
            "epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step"),
            "model_config": checkpoint["model_config"], "index_csv": str(Path(args.index_csv).resolve()),
            "dataset": {"seq_len": dataset.seq_len, "sampling": dataset.sampling, "normalize": dataset.normalize,
                        "image_size": dataset.image_size, "split": args.split, "annotated": dataset.has_annotations,
                        "split_of_rows": dataset.split_source},
            "device": str(device), "amp": str(amp_dtype or "off").replace("torch.", ""), "pool": args.pool,
            "seconds": seconds, **result,
            "skipped": [row.cell_id for row in dataset.skipped] + result.get("skipped", []),
            "frames_per_s": result["frames_encoded"] / seconds if seconds > 0 else None,
            "encode_frames_per_s": result["frames_encoded"] / result["encode_s"] if result["encode_s"] > 0 else None,
        })
        output.commit()
    return info


def run(args: argparse.Namespace) -> int:
    """main() for the command line, a stop signal ending it at once (nothing to keep); then one line saying what was
    written."""
    target = Path(args.out) / SUBFOLDERS[args.mode]
    with cli.stop_signals(cli.StopSignal(f"extraction stopped, nothing of it kept; {target} is as it was")) as stop:
        summary = main(args, stop)
    print(f"{summary['frames_encoded']} frames in {summary['seconds']:.1f} s "
          f"({summary['frames_per_s']:.1f} frames/s, encoder alone {summary['encode_frames_per_s']:.1f}) -> {target}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main("extract_latents.py", run, get_args_parser().parse_args()))
