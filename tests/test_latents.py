"""extract_latents.py on a tiny checkpoint trained here on synthetic wells, then analyze_latents.py on its output."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import analyze_latents
import extract_latents
import latent_encoding
import latents_folder
from cli import InputError, run_main
from dataset_ivf import IVFSequenceDataset
from make_synthetic_data import make_synthetic_dataset
from model import ConvLSTMAutoencoder, ModelConfig

N_EMBRYOS, N_FRAMES, SEQ_LEN = 8, 24, 4
STRIDE = N_FRAMES // 2 // SEQ_LEN  # the latents fixture's state stride: 12 frames (--frame_step 2), clips of 4
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def wells(tmp_path_factory) -> Path:
    """Synthetic wells at 32 px with annotations: returns index.csv."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("wells"), N_EMBRYOS, N_FRAMES, 32, seed=0)


@pytest.fixture(scope="session")
def checkpoint(wells, tmp_path_factory) -> Path:
    """A tiny model (32 px, hidden 8/8, one layer each, classifier) after a few Adam steps, saved like train.py."""
    torch.manual_seed(0)
    config = ModelConfig(image_size=32, cnn_channels=(4, 8, 8), encoder_hidden_dim=8, encoder_layers=1,
                         decoder_hidden_dim=8, decoder_layers=1, classifier_hidden=(16, 8))
    model = ConvLSTMAutoencoder(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_args = {"index_csv": str(wells), "seq_len": SEQ_LEN, "sampling": "uniform", "normalize": "minmax01",
                  "annotations_dir": str(wells.parent / "annotations"), "val_fraction": 0.2, "seed": 0,
                  "image_size": 32, "batch_size": 4}
    data = IVFSequenceDataset(wells, seq_len=SEQ_LEN, image_size=32, split="train")
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)
    losses = {}
    for step, batch in enumerate(loader):
        output = model(batch["video"])  # (B, T, 1, 32, 32) in, dict out
        recon = F.l1_loss(output["reconstruction"], batch["video"])
        cls = F.cross_entropy(output["logits"], batch["label"])
        optimizer.zero_grad()
        (recon + cls).backward()
        optimizer.step()
        losses = {"total": (recon + cls).item(), "reconstruction": recon.item(), "classification": cls.item()}
        if step == 2:
            break
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "scheduler_state_dict": {}, "scaler_state_dict": {}, "epoch": 1, "global_step": 3,
                "best_val_loss": losses["total"], "losses": losses, "model_config": asdict(config),
                "args": train_args, "rng_state": {"torch": torch.get_rng_state()}}, path)
    return path


def _run(args: list[str]) -> dict:
    return extract_latents.main(extract_latents.get_args_parser().parse_args(args))


@pytest.fixture(scope="session")
def latents(checkpoint, wells, tmp_path_factory) -> Path:
    """Both extraction modes into one folder (every 2nd frame, the state stepping as in training, small chunks)."""
    out = tmp_path_factory.mktemp("latents")
    common = ["--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out", str(out), "--device", "cpu"]
    _run(common + ["--mode", "clips", "--batch_size", "3", "--num_workers", "0", "--save_z_seq"])
    _run(common + ["--mode", "trajectory", "--frame_step", "2", "--chunk_len", "5", "--state_stride", "auto"])
    return out


def test_chunked_trajectory_equals_one_pass(checkpoint):
    model, _ = extract_latents.load_model(str(checkpoint))
    frames = torch.rand(23, 1, 32, 32)  # (n, 1, H, W)
    one_pass, full_one = latent_encoding.encode_trajectory(model, frames, chunk_len=23, keep_full=True)
    chunked, full_chunked = latent_encoding.encode_trajectory(model, frames, chunk_len=4, keep_full=True)
    assert one_pass.shape == (23, 8) and full_one.shape == (23, 8, 4, 4)
    torch.testing.assert_close(chunked, one_pass, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_chunked, full_one, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and both equal the pooled z_seq of a plain forward pass
        z_seq = model(frames[None])["z_seq"][0]  # (n, C, h, w)
    torch.testing.assert_close(one_pass, z_seq.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


def test_clips_outputs_shapes_and_metadata(latents, wells):
    folder = latents / "clips"
    meta = pd.read_csv(folder / "metadata.csv", keep_default_na=False)
    index = pd.read_csv(wells)
    assert len(meta) == N_EMBRYOS and meta["cell_id"].tolist() == index["embryo_id"].tolist()
    assert meta["label"].tolist() == index["label"].tolist()
    assert {"patient_id", "n_frames", "path", "split"} <= set(meta.columns)  # extra index columns carried
    assert np.load(folder / "z_last_pooled.npy").shape == (N_EMBRYOS, 8)
    z_seq = np.load(folder / "z_seq_pooled.npy")
    assert z_seq.shape == (N_EMBRYOS, SEQ_LEN, 8)  # seq_len taken from the checkpoint's args
    np.testing.assert_allclose(np.load(folder / "z_last_pooled.npy"), z_seq[:, -1], rtol=1e-6)
    full = np.load(folder / "z_seq.npy")
    assert full.shape == (N_EMBRYOS, SEQ_LEN, 8, 4, 4)
    np.testing.assert_allclose(full.mean(axis=(3, 4)), z_seq, rtol=1e-5, atol=1e-6)
    assert np.load(folder / "z_last.npy").shape == (N_EMBRYOS, 8, 4, 4)
    probs = np.load(folder / "probs.npy")
    assert probs.shape == (N_EMBRYOS, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    first = meta.iloc[0]
    assert len(first["frame_indices"].split("|")) == SEQ_LEN
    assert len(first["hours"].split("|")) == SEQ_LEN
    embryos = meta[meta["label"] == 1]
    assert all(len(p.split("|")) == SEQ_LEN and p.split("|")[-1] for p in embryos["phase"])
    info = json.loads((folder / "info.json").read_text())
    assert info["mode"] == "clips" and info["frames_encoded"] == N_EMBRYOS * SEQ_LEN
    assert info["dataset"]["annotated"] and info["model_config"]["encoder_hidden_dim"] == 8


def test_trajectory_files_cover_every_strided_frame(latents, checkpoint, wells):
    folder = latents / "trajectories"
    meta = pd.read_csv(folder / "metadata.csv", keep_default_na=False)
    assert len(meta) == N_EMBRYOS and (meta["total_frames"] == N_FRAMES).all()
    assert (meta["n_frames"] == N_FRAMES // 2).all() and (meta["frame_step"] == 2).all()
    with np.load(folder / meta["file"].iloc[0]) as data:
        z, frame_indices, hours, phase = data["z"], data["frame_indices"], data["hours"], data["phase"]
    assert z.shape == (N_FRAMES // 2, 8) and z.dtype == np.float32
    np.testing.assert_array_equal(frame_indices, np.arange(0, N_FRAMES, 2))
    assert np.all(np.diff(hours) > 0)  # from <embryo>_timeElapsed.csv
    embryo = meta.index[meta["label"] == 1][0]
    with np.load(folder / meta["file"].iloc[embryo]) as data:
        assert data["phase"][-1] != "" and len(data["phase"]) == N_FRAMES // 2
    # the state steps as in training: 12 frames, clips of 4 -> 3 interleaved sequences, each a fresh single pass
    assert (meta["state_stride"] == STRIDE).all()
    model, _ = extract_latents.load_model(str(checkpoint))
    dataset = IVFSequenceDataset(wells, seq_len=SEQ_LEN, image_size=32)
    frames = torch.from_numpy(dataset.load_frames(0, np.arange(0, N_FRAMES, 2)))
    for j in range(STRIDE):
        single, _ = latent_encoding.encode_trajectory(model, frames[j::STRIDE], chunk_len=len(frames))
        np.testing.assert_allclose(z[j::STRIDE], single.numpy(), rtol=1e-5, atol=1e-6)
    assert phase.dtype.kind == "U"


def test_state_stride_follows_the_training_clips(checkpoint, wells, tmp_path, capsys):
    dataset = IVFSequenceDataset(wells, seq_len=10, image_size=32)
    assert [latent_encoding.state_stride("auto", n, dataset) for n in (5, 14, 96, 500)] == [1, 1, 10, 50]
    assert latent_encoding.state_stride(7, 96, dataset) == 7 and latent_encoding.state_stride(7, 3, dataset) == 3
    dataset.sampling = "window"  # consecutive frames in training: the state steps through every frame
    assert latent_encoding.state_stride("auto", 96, dataset) == 1
    model, _ = extract_latents.load_model(str(checkpoint))
    recordings = [torch.rand(n, 1, 32, 32) for n in (11, 7, 9)]  # (n, 1, H, W)
    strided = latent_encoding.encode_interleaved(model, recordings, [3, 1, 4], 2, 2, keep_full=True)
    for frames, stride, (pooled, full) in zip(recordings, [3, 1, 4], strided, strict=True):
        assert pooled.shape == (len(frames), 8) and full.shape == (len(frames), 8, 4, 4)
        for j in range(stride):
            alone, alone_full = latent_encoding.encode_trajectory(model, frames[j::stride], 64, keep_full=True)
            torch.testing.assert_close(pooled[j::stride], alone, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(full[j::stride], alone_full, rtol=1e-5, atol=1e-6)
    one_pass = latent_encoding.encode_interleaved(model, recordings, [1, 1, 1], 2, 5)
    for (pooled, _), (plain, _) in zip(one_pass, latent_encoding.encode_trajectories(model, recordings, 5),
                                       strict=True):
        torch.testing.assert_close(pooled, plain, rtol=1e-5, atol=1e-6)
    _run(["--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out", str(tmp_path), "--device", "cpu",
          "--mode", "trajectory", "--no_controls"])  # the default: one pass
    meta = pd.read_csv(tmp_path / "trajectories" / "metadata.csv")
    assert (meta["state_stride"] == 1).all()
    with np.load(tmp_path / "trajectories" / meta["file"].iloc[0]) as data:
        frames = torch.from_numpy(IVFSequenceDataset(wells, seq_len=SEQ_LEN, image_size=32).load_frames(
            0, np.arange(N_FRAMES)))
        single, _ = latent_encoding.encode_trajectory(model, frames, chunk_len=N_FRAMES)
        np.testing.assert_allclose(data["z"], single.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(SystemExit) as exc:
        extract_latents.get_args_parser().parse_args(["--checkpoint", "c", "--index_csv", "i", "--out", "o",
                                                      "--state_stride", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--state_stride: expected auto or a whole number >= 1, got '0'" in err


def test_same_named_recordings_in_two_folders_are_both_extracted(checkpoint, wells, tmp_path):
    rows = pd.read_csv(wells, dtype=str, keep_default_na=False).head(2)
    for plate, row in zip(("plateA", "plateB"), rows.itertuples(), strict=True):
        (tmp_path / plate).mkdir()
        (tmp_path / plate / "E1").symlink_to(wells.parent / row.path, target_is_directory=True)
    pd.DataFrame({"path": ["plateA/E1", "plateB/E1"]}).to_csv(tmp_path / "index.csv", index=False)
    _run(["--checkpoint", str(checkpoint), "--index_csv", str(tmp_path / "index.csv"), "--out", str(tmp_path / "out"),
          "--device", "cpu", "--mode", "trajectory"])
    meta = pd.read_csv(tmp_path / "out" / "trajectories" / "metadata.csv")
    assert list(meta["cell_id"]) == ["E1", "E1"] and meta["file"].nunique() == 2


def test_analysis_on_extracted_latents(latents, tmp_path):
    out = tmp_path / "analysis"
    args = analyze_latents.get_args_parser().parse_args(["--latents", str(latents), "--out", str(out),
                                                         "--cv_folds", "2", "--max_embryo_plots", "2"])
    summary = analyze_latents.main(args)
    assert summary["trajectory_source"] == "trajectories"
    assert summary["trajectories"]["n_embryos"] == N_EMBRYOS
    assert summary["classification"]["source"].startswith("model classifier probabilities")
    assert summary["classification"]["n"] == N_EMBRYOS
    assert summary["phase_probe"]["n_embryos"] == int((pd.read_csv(latents / "clips" / "metadata.csv")
                                                        ["label"] == 1).sum())
    for name in ("population.png", "speed_curves.png", "outliers.png", "persistence.png", "roc_curve.png",
                 "confusion_matrix.png", "summary.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "tphate").glob("*.png"))) == 2


def test_file_names_match_the_analysis_reader():
    for name in ("TRAJECTORY_DIR", "CLIPS_DIR", "METADATA_CSV"):
        assert getattr(extract_latents, name) == getattr(latents_folder, name)


def test_cli_bad_checkpoint_exits_2_with_one_line(tmp_path, wells):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, str(REPO / "extract_latents.py"), "--checkpoint", str(bad),
                             "--index_csv", str(wells), "--out", str(tmp_path / "o"), "--device", "cpu"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and str(bad) in result.stderr


@pytest.mark.parametrize("case", ["tensor", "no_model_state", "nan_weights"])
def test_malformed_checkpoints_exit_2_with_one_line(case, checkpoint, wells, tmp_path, capsys):
    good = torch.load(checkpoint, weights_only=True)
    nan = {k: v * float("nan") if v.is_floating_point() else v for k, v in good["model_state_dict"].items()}
    bad = tmp_path / "bad.pt"
    torch.save({"tensor": torch.zeros(3), "no_model_state": {k: v for k, v in good.items() if k != "model_state_dict"},
                "nan_weights": {**good, "model_state_dict": nan}}[case], bad)
    args = extract_latents.get_args_parser().parse_args(["--checkpoint", str(bad), "--index_csv", str(wells),
                                                         "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert run_main("extract_latents.py", extract_latents.run, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert {"tensor": "not a train.py checkpoint", "no_model_state": "missing model_state_dict",
            "nan_weights": "non-finite weights"}[case] in err
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_and_bad_flags_are_clear_errors(tmp_path, wells):
    common = ["--index_csv", str(wells), "--out", str(tmp_path / "o"), "--device", "cpu"]
    with pytest.raises(InputError, match="checkpoint not found"):
        _run(["--checkpoint", str(tmp_path / "missing.pt"), *common])
    with pytest.raises(InputError, match="--frame_step must be at least 1"):
        _run(["--checkpoint", str(tmp_path / "missing.pt"), "--mode", "trajectory", "--stride", "0", *common])


def test_trajectories_carry_the_controls(latents, checkpoint, wells, tmp_path):
    """Beside z: the same frames through the run's initial weights (seed 0) and their 16 x 16 pixels."""
    folder = latents / "trajectories"
    meta = pd.read_csv(folder / "metadata.csv", keep_default_na=False)
    with np.load(folder / meta["file"].iloc[0]) as data:
        z, untrained, pixels = data["z"], data["z_untrained"], data["pixels"]
    assert untrained.shape == z.shape and pixels.shape == (len(z), 256)
    assert not np.allclose(untrained, z) and np.isfinite(untrained).all()
    assert 0 <= pixels.min() and pixels.max() <= 1 and pixels.std() > 0
    loaded = torch.load(checkpoint, weights_only=True)
    control = latent_encoding.untrained_model(loaded, torch.device("cpu"))
    torch.manual_seed(0)  # the training seed in the checkpoint's args: train.py's initial weights
    initial = ConvLSTMAutoencoder(control.config).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in control.state_dict().items())
    frames = torch.from_numpy(IVFSequenceDataset(wells, seq_len=SEQ_LEN, image_size=32).load_frames(
        0, np.arange(0, N_FRAMES, 2)))
    np.testing.assert_allclose(untrained, latent_encoding.encode_interleaved(control, [frames], [STRIDE], 1, 5)[0][0]
                               .numpy(), atol=1e-6)  # with the trained model's state stride
    _run(["--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out", str(tmp_path), "--device", "cpu",
          "--mode", "trajectory", "--no_controls"])
    with np.load(next((tmp_path / "trajectories").glob("*.npz"))) as data:
        assert set(data.files) == {"z", "frame_indices", "hours", "phase", "extraction_id"}


def test_mean_std_pooling_keeps_the_spread_in_both_modes(latents, checkpoint, wells, tmp_path):
    """--pool mean_std: the channel means (as --pool mean), then each channel's standard deviation over space,
    for the latents and their untrained control alike; the analysis reads the wider latent."""
    z = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) ** 0.5  # (N, C, h, w)
    pooled = latent_encoding.pool_space(z, "mean_std")
    assert pooled.shape == (2, 6)
    torch.testing.assert_close(pooled[:, :3], z.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, 3:], torch.from_numpy(z.numpy().std(axis=(2, 3))))
    common = ["--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out", str(tmp_path), "--device", "cpu",
              "--pool", "mean_std"]
    _run(common + ["--mode", "clips", "--batch_size", "3", "--num_workers", "0", "--save_z_seq"])
    full = np.load(tmp_path / "clips" / "z_seq.npy")  # (N, T, C, h, w)
    spread = np.load(tmp_path / "clips" / "z_seq_pooled.npy")
    assert spread.shape == (N_EMBRYOS, SEQ_LEN, 16)
    np.testing.assert_allclose(spread[..., :8], np.load(latents / "clips" / "z_seq_pooled.npy"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread[..., 8:], full.std(axis=(3, 4)), rtol=1e-4, atol=1e-6)
    _run(common + ["--mode", "trajectory", "--frame_step", "2", "--chunk_len", "5", "--state_stride", "auto"])
    meta = pd.read_csv(tmp_path / "trajectories" / "metadata.csv", keep_default_na=False)
    with (np.load(tmp_path / "trajectories" / meta["file"].iloc[0]) as wide,
          np.load(latents / "trajectories" / meta["file"].iloc[0]) as narrow):
        assert wide["z"].shape == wide["z_untrained"].shape == (N_FRAMES // 2, 16)
        np.testing.assert_allclose(wide["z"][:, :8], narrow["z"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wide["z_untrained"][:, :8], narrow["z_untrained"], rtol=1e-5, atol=1e-6)
        assert (wide["z"][:, 8:] > 0).all()
    info = json.loads((tmp_path / "trajectories" / "info.json").read_text())
    assert info["pool"] == "mean_std"
    args = analyze_latents.get_args_parser().parse_args(["--latents", str(tmp_path), "--out", str(tmp_path / "a"),
                                                         "--cv_folds", "2"])
    (tmp_path / "a").mkdir()
    probes = analyze_latents.analyse_probes(analyze_latents.load_trajectories(tmp_path), tmp_path / "a", args)
    widths = {c["n_components"] for c in probes["phase"]["linear"]["pixels"]["chosen"]}
    assert widths <= {4, 8, 16, 32, 64}  # a quarter to four times the doubled latent width (16)
