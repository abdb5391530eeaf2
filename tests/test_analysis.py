"""analyze_latents.py and its numbers (latent_geometry.py, latent_probes.py): metric functions on hand-made inputs,
and the whole CLI on a hand-made latents folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA

import analyze_latents as al
import latent_geometry as geometry
import latent_probes as probes
import latents_folder
from cli import PIXELS_KEY, UNTRAINED_KEY, InputError, run_main

REPO = Path(__file__).resolve().parents[1]


def test_speed_of_constant_velocity_line():
    velocity = np.array([3.0, 4.0, 0.0])  # |v| = 5
    z = np.arange(11)[:, None] * velocity  # (11, 3): ten equal steps
    np.testing.assert_allclose(geometry.speed_curve(z), np.full(10, 5.0))
    stats = geometry.trajectory_stats(z)
    assert stats["trajectory_length"] == pytest.approx(50.0)
    assert stats["start_end_distance"] == pytest.approx(50.0)
    assert stats["straightness"] == pytest.approx(1.0)
    assert stats["max_speed"] == pytest.approx(5.0)


def test_back_and_forth_has_length_but_no_displacement():
    z = np.array([[0.0], [1.0], [2.0], [1.0], [0.0]])
    stats = geometry.trajectory_stats(z)
    assert stats["trajectory_length"] == pytest.approx(4.0)
    assert stats["start_end_distance"] == pytest.approx(0.0)


def test_known_outlier_is_the_only_one_flagged():
    values = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 10.0])
    scores = geometry.robust_z(values)
    assert abs(scores[-1]) > 3.5
    assert np.all(np.abs(scores[:-1]) < 3.5)
    table = pd.DataFrame({"embryo": list("abcdefg"), "x": values, "y": np.ones(7)})
    flagged = geometry.flag_outliers(table, columns=("x", "y"), threshold=3.5)
    assert flagged.loc[flagged["is_outlier"], "embryo"].tolist() == ["g"]


def test_robust_z_with_zero_mad_still_flags_the_odd_one():
    scores = geometry.robust_z(np.array([2.0, 2.0, 2.0, 2.0, 9.0]))
    assert scores[-1] > 3.5 and np.all(scores[:-1] == 0)


def test_known_auc_accuracy_and_confusion():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])  # 3 of 4 positive/negative pairs ordered correctly
    metrics = probes.classification_metrics(y, np.c_[1 - p1, p1])
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.75)  # threshold 0.5: 0.35 is the one error
    assert metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert metrics["roc_curve"]["fpr"][0] == 0 and metrics["roc_curve"]["tpr"][-1] == 1


def test_single_class_has_no_auc():
    metrics = probes.classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert metrics["roc_auc"] is None and "roc_auc_note" in metrics
    assert metrics["accuracy"] == pytest.approx(0.5)


def test_noisy_circle_gives_one_long_h1_bar():
    rng = np.random.default_rng(0)
    angle = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    z = np.c_[np.cos(angle), np.sin(angle), np.zeros(80)] + rng.normal(scale=0.05, size=(80, 3))
    h0, h1 = geometry.persistence_diagrams(z)
    lifetimes = np.sort(h1[:, 1] - h1[:, 0])[::-1]
    assert lifetimes[0] > 1.0  # the loop: born at ~spacing, dies near radius sqrt(3)
    assert len(lifetimes) == 1 or lifetimes[1] < 0.2 * lifetimes[0]
    assert np.isinf(h0[:, 1]).sum() == 1  # one connected component never dies
    radii = np.linspace(0, 2, 201)
    betti1 = geometry.betti_curve(h1, radii)
    assert betti1[np.searchsorted(radii, 1.0)] == 1
    assert betti1[-1] == 0


def test_subsampled_persistence_still_finds_the_loop():
    angle = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    _, h1 = geometry.persistence_diagrams(np.c_[np.cos(angle), np.sin(angle)], max_points=50)
    assert (h1[:, 1] - h1[:, 0]).max() > 1.0


def test_total_persistence_entropy_and_betti_on_a_known_diagram():
    diagram = np.array([[0.0, 1.0], [0.5, 1.5], [0.0, np.inf]])
    assert geometry.total_persistence(diagram) == pytest.approx(2.0)
    assert geometry.persistence_entropy(diagram) == pytest.approx(np.log(2))
    np.testing.assert_array_equal(geometry.betti_curve(diagram, np.array([0.0, 0.75, 1.25, 2.0])), [2, 3, 2, 1])
    assert geometry.persistence_entropy(np.zeros((0, 2))) == 0.0


def frames_data(features: dict, y, embryo, hours=None) -> probes.ProbeData:
    """ProbeData of frames: folds grouped by embryo, each embryo's frames in time order."""
    embryo = np.asarray(embryo)
    frame = np.concatenate([np.arange((embryo == e).sum()) for e in dict.fromkeys(embryo)])
    hours = np.full(len(embryo), np.nan) if hours is None else np.asarray(hours, dtype=np.float64)
    return probes.ProbeData(features, np.asarray(y), embryo, embryo, hours, frame)


def test_label_probe_separates_separable_recordings_with_folds_grouped_by_patient():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 5)) + 4.0 * y[:, None]
    patients = np.array([f"P{i // 4}" for i in range(40)])  # 10 patients of 4 embryos each
    data = probes.ProbeData({"trained": x, "pixels": rng.normal(size=(40, 8))}, y, patients,
                            np.array([f"E{i}" for i in range(40)]), np.full(40, np.nan), np.zeros(40, int))
    result, events = probes.run_probe(probes.SPECS["label"], data, n_splits=5)
    assert result["folds"] == 5 and result["classes"] == [0, 1] and result["n_groups"] == 10 and events is None
    for readout in probes.READOUTS:
        assert result[readout]["trained"]["balanced_accuracy"] > 0.95
        assert result[readout]["pixels"]["balanced_accuracy"] < 0.8
        assert result[readout]["majority"]["balanced_accuracy"] == pytest.approx(0.5)


def test_phase_probe_beats_the_majority_baseline_with_both_readouts():
    rng = np.random.default_rng(2)
    phases = np.tile(np.repeat(["t2", "t4", "tB"], [10, 10, 20]), 6)  # 6 embryos x 40 frames
    centers = {"t2": 0.0, "t4": 3.0, "tB": 6.0}
    x = np.array([centers[p] for p in phases])[:, None] + rng.normal(scale=0.5, size=(240, 4))
    embryo = np.repeat([f"E{i}" for i in range(6)], 40)
    data = frames_data({"trained": x, "untrained": "not extracted"}, phases, embryo)
    result, events = probes.run_probe(probes.SPECS["phase"], data, n_splits=3)
    assert result["classes"] == ["t2", "t4", "tB"] and result["folds"] == 3
    for readout in probes.READOUTS:
        trained, majority = result[readout]["trained"], result[readout]["majority"]
        assert majority["accuracy"] == pytest.approx(0.5) and majority["balanced_accuracy"] == pytest.approx(1 / 3)
        assert trained["accuracy"] > 0.9 and trained["balanced_accuracy"] > 0.9 and trained["within_one"] > 0.99
        assert trained["decoded"]["balanced_accuracy"] >= trained["balanced_accuracy"] - 0.02
        assert len(trained["chosen"]) == 3  # one choice per outer fold
        assert result[readout]["untrained"] == {"missing": "not extracted"} and "missing" in result[readout]["pixels"]
    assert result["margin_over_pixels"] is None and result["margin_over_untrained"] is None
    assert set(result["linear"]["trained"]["chosen"][0]) == {"C"}
    assert set(result["knn"]["trained"]["chosen"][0]) == {"n_neighbors"}
    assert set(events["unit"]) == {"frames"}  # no times: onsets in frames


def test_hours_probe_recovers_a_known_linear_relation():
    rng = np.random.default_rng(5)
    embryo = np.repeat([f"E{i}" for i in range(5)], 30)
    hours = np.tile(np.arange(30) * 0.5, 5)  # 0 .. 14.5 h in every embryo
    x = np.c_[2.0 * hours + 3.0, rng.normal(size=(150, 3))]  # hours = (x0 - 3) / 2 exactly
    noise = rng.normal(size=(150, 4))
    data = frames_data({"trained": x, "untrained": noise, "pixels": rng.uniform(size=(150, 50))}, hours, embryo)
    result, events = probes.run_probe(probes.SPECS["hours"], data, n_splits=5)
    linear = result["linear"]
    assert result["metric"] == "r2" and result["folds"] == 5 and result["n_groups"] == 5 and events is None
    assert linear["trained"]["r2"] > 0.999 and linear["trained"]["mae"] < 0.05
    assert linear["majority"]["r2"] == pytest.approx(0.0, abs=1e-9)  # every fold's training mean is 7.25 h
    assert linear["majority"]["mae"] == pytest.approx(np.abs(hours - 7.25).mean())
    assert linear["untrained"]["r2"] < 0.2 and linear["pixels"]["r2"] < 0.2
    assert {c["n_components"] for c in linear["pixels"]["chosen"]} <= set(probes.pixel_widths(4, 50))
    assert result["margin_over_pixels"] == pytest.approx(linear["trained"]["r2"] - linear["pixels"]["r2"])
    assert result["knn"]["trained"]["r2"] > 0.8  # neighbours see the 3 noise columns too


def test_hours_probe_chooses_its_ridge_strength_by_embryo():
    """Features that follow time along a different direction in every embryo (as a well's own drift does)
    predict nothing in a new embryo: a ridge strength chosen by leaving out single frames fits them anyway
    (R^2 about -2.8 here), one chosen by leaving out whole embryos shrinks them away."""
    rng = np.random.default_rng(3)
    n_embryos, n_frames, width = 10, 30, 40
    embryo = np.repeat([f"E{i}" for i in range(n_embryos)], n_frames)
    hours = np.tile(np.arange(n_frames) * 0.5, n_embryos)
    directions = np.repeat(rng.normal(size=(n_embryos, width)), n_frames, axis=0)
    x = hours[:, None] * directions + rng.normal(scale=0.5, size=(n_embryos * n_frames, width))
    result, _ = probes.run_probe(probes.SPECS["hours"], frames_data({"trained": x}, hours, embryo), n_splits=5)
    assert result["linear"]["trained"]["r2"] > -0.5


def test_inner_folds_can_choose_a_pixel_width_past_the_latent_width():
    """The phase lives in 12 low-variance pixel directions under 8 loud ones: PCA to the latent width (4) keeps only
    the loud noise; the inner folds choose a wider PCA and the pixel control reads the phase."""
    rng = np.random.default_rng(4)
    embryo = np.repeat([f"E{i}" for i in range(8)], 30)
    phase_index = np.tile(np.repeat([0, 1, 2], 10), 8)
    signal = rng.normal(size=(3, 12))[phase_index] + 0.3 * rng.normal(size=(240, 12))
    pixels = np.c_[30.0 * rng.normal(size=(240, 8)), signal]
    data = frames_data({"trained": rng.normal(size=(240, 4)), "pixels": pixels},
                       np.array(["t2", "t4", "tB"])[phase_index], embryo)
    result, _ = probes.run_probe(probes.SPECS["phase"], data, n_splits=4)
    chosen = [c["n_components"] for c in result["linear"]["pixels"]["chosen"]]
    assert probes.pixel_widths(4, 20) == [2, 4, 8, 16] and min(chosen) > 4
    assert result["linear"]["pixels"]["balanced_accuracy"] > 0.9 and result["margin_over_pixels"] < -0.4


def test_pixel_widths_go_past_the_latent_width_within_the_pixels():
    assert probes.pixel_widths(32, 256) == [8, 16, 32, 64, 128]
    assert probes.pixel_widths(256, 256) == [64, 128, 256]
    assert probes.pixel_widths(2, 256) == [2, 4, 8]


def test_monotone_decoding_recovers_the_sequence_from_noisy_probabilities_and_never_goes_back():
    rng = np.random.default_rng(6)
    truth = np.repeat([0, 1, 2, 4, 5], [12, 1, 20, 15, 12])  # class 3 skipped, class 1 one frame long
    probs = 0.5 * np.eye(6)[truth] + rng.uniform(0, 1, size=(len(truth), 6))  # the argmax: right 2 times in 3
    probs /= probs.sum(axis=1, keepdims=True)
    decoded = probes.monotone_decode(probs)
    assert (probs.argmax(axis=1) == truth).mean() < 0.75
    assert (decoded == truth).mean() > 0.85 and (np.diff(decoded) >= 0).all()
    for _ in range(20):  # whatever the probabilities, the decoded phases never go backwards
        assert (np.diff(probes.monotone_decode(rng.dirichlet(np.ones(6), size=40))) >= 0).all()
    assert probes.monotone_decode(np.eye(3)[[2, 1, 0]]).tolist() in ([0, 0, 0], [1, 1, 1], [2, 2, 2])


def test_event_times_equal_the_annotation_when_the_probabilities_are_right():
    """Features that give the phase away: every decoded onset is the annotated one, in hours (embryos with times,
    each sampled at its own hours) and in frames (an embryo without), reported apart."""
    rng = np.random.default_rng(8)
    names, lengths = ["t2", "t3", "t4", "t8", "tB"], [(6, 1, 9, 8, 6), (5, 2, 7, 10, 6), (7, 1, 8, 9, 5)]
    y, embryo, hours = [], [], []
    for e in range(9):
        counts = lengths[e % 3]
        y += [names[k] for k, c in enumerate(counts) for _ in range(c)]
        embryo += [f"E{e}"] * sum(counts)
        times = 20.0 + e + np.cumsum(rng.uniform(0.2, 0.4, size=sum(counts)))
        hours += list(times) if e else [np.nan] * sum(counts)  # E0 has no times
    y = np.array(y)
    x = np.eye(5)[[names.index(p) for p in y]] + 0.01 * rng.normal(size=(len(y), 5))
    result, events = probes.run_probe(probes.SPECS["phase"], frames_data({"trained": x}, y, embryo, hours),
                                      n_splits=3)
    trained = events[events["source"] == "trained"]
    np.testing.assert_allclose(trained["predicted_onset"], trained["annotated_onset"])
    assert result["event_times"]["hours"]["mae"]["trained"] == 0 and result["event_times"]["hours"]["n_embryos"] == 8
    assert result["event_times"]["frames"]["n_embryos"] == 1 and set(trained[trained["unit"] == "frames"]["embryo"]) \
        == {"E0"}
    assert set(result["event_times"]["hours"]["mae_per_event"]) == set(names)
    assert result["event_times"]["hours"]["mae"]["median_onset"] > 0  # the clock alone misses each embryo's timing


def _acf_dropoff(x):
    """First lag where the column-averaged autocorrelation drops below 0: what tphate's autocorrelation view uses
    (statsmodels acf of each input column, averaged with equal weight)."""
    x = x - x.mean(axis=0)
    acf = np.stack([(x[:len(x) - k] * x[k:]).sum(axis=0) for k in range(len(x))]) / (x ** 2).sum(axis=0)
    return int(np.flatnonzero(acf.mean(axis=1) < 0)[0])


def test_tphate_gets_the_latents_so_its_autocorrelation_is_not_flattened():
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 120)
    curve = np.c_[np.cos(3 * t), np.sin(3 * t), t]  # a smooth path in 3 dimensions ...
    z = curve @ rng.normal(size=(3, 32)) + 0.02 * rng.normal(size=(120, 32))  # ... spread over 32 latent channels
    _, method, dropoff = geometry.tphate_embedding(z, n_pca=30, knn=5, seed=0)
    pre_reduced = PCA(n_components=30).fit_transform(z)  # 3 smooth components, 27 of low-variance noise
    assert method == "tphate" and dropoff == _acf_dropoff(z)
    assert dropoff > 1.5 * _acf_dropoff(pre_reduced)  # feeding a PCA copy would flatten the autocorrelation


def test_analysis_modules_import_no_torch():
    code = ("import sys, analyze_latents, latent_figures, latent_geometry, latent_probes; "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_patient_groups_fall_back_to_embryo_id_prefix():
    meta = pd.DataFrame({"cell_id": ["AA83-7", "AA83-2", "BX10-1", "solo"]})
    assert al.patient_groups(meta).tolist() == ["AA83", "AA83", "BX10", "solo"]
    meta["patient_id"] = ["p1", "", "p2", "p3"]
    assert al.patient_groups(meta).tolist() == ["p1", "AA83", "p2", "p3"]


def test_tphate_embedding_of_a_spiral():
    t = np.linspace(0, 4 * np.pi, 60)
    z = np.c_[t * np.cos(t), t * np.sin(t), t, np.zeros(60)]
    embedding, method, dropoff = geometry.tphate_embedding(z, n_pca=3, seed=0)
    assert method == "tphate" and embedding.shape == (60, 2) and np.isfinite(embedding).all()
    assert embedding.std(axis=0).min() > 0 and dropoff > 1
    short, method, dropoff = geometry.tphate_embedding(z[:6])
    assert method == "pca" and short.shape == (6, 2) and dropoff is None
    still, method, _ = geometry.tphate_embedding(np.ones((20, 4)))
    assert method == "constant" and np.all(still == 0)


def _seal(root: Path) -> Path:
    """Seal a hand-made latents folder as extract_latents.py does: the extraction id in every trajectory, info.json."""
    for name in ("trajectories", "clips"):
        if (root / name).is_dir():
            for path in (root / name).glob("*.npz"):
                with np.load(path) as data:
                    arrays = dict(data)
                np.savez(path, **{**arrays, "extraction_id": np.asarray("handmade")})
            latents_folder.seal(root / name, {"extraction_id": "handmade", "checkpoint": "handmade.pt", "epoch": 1,
                                              "weights_sha256": "0" * 64})
    return root


def _write_latents(root, n_embryos=8, n_frames=30, channels=6, with_probs=True):
    """A latents folder in extract_latents.py's layout: drifting trajectories, embryo 0 moving 20x faster."""
    rng = np.random.default_rng(3)
    traj_dir, clip_dir = root / "trajectories", root / "clips"
    traj_dir.mkdir(parents=True)
    clip_dir.mkdir()
    phases = np.array(["tPB2"] * 10 + ["t2"] * 10 + ["tB"] * 10)
    rows, clip_rows, z_last, z_seq = [], [], [], []
    for e in range(n_embryos):
        label = int(e % 4 != 0)
        direction = rng.normal(size=channels)
        step = direction / np.linalg.norm(direction) * (20.0 if e == 0 else 1.0)
        z = np.cumsum(np.tile(step, (n_frames, 1)) + 0.2 * rng.normal(size=(n_frames, channels)), axis=0)
        z += 3.0 * label
        name = f"{e:05d}_P{e // 2}-{e % 2 + 1}"
        np.savez(traj_dir / f"{name}.npz", z=z.astype(np.float32), frame_indices=np.arange(n_frames),
                 hours=np.arange(n_frames, dtype=np.float32) * 0.5,
                 phase=phases[:n_frames] if label else np.full(n_frames, ""))
        rows.append({"file": f"{name}.npz", "cell_id": f"P{e // 2}-{e % 2 + 1}", "label": label,
                     "n_frames": n_frames, "patient_id": f"P{e // 2}"})
        clip = z[::6][:4]
        z_seq.append(clip)
        z_last.append(clip[-1])
        clip_rows.append({"clip": e, "cell_id": f"P{e // 2}-{e % 2 + 1}", "label": label,
                          "frame_indices": "0|6|12|18", "hours": "0|3|6|9",
                          "phase": "|".join(phases[[0, 6, 12, 18]]) if label else "", "patient_id": f"P{e // 2}",
                          "split": "train" if e < 6 else "val"})
    pd.DataFrame(rows).to_csv(traj_dir / "metadata.csv", index=False)
    pd.DataFrame(clip_rows).to_csv(clip_dir / "metadata.csv", index=False)
    np.save(clip_dir / "z_last_pooled.npy", np.stack(z_last).astype(np.float32))
    np.save(clip_dir / "z_seq_pooled.npy", np.stack(z_seq).astype(np.float32))
    if with_probs:
        labels = np.array([r["label"] for r in rows])
        p1 = np.where(labels == 1, 0.9, 0.2)
        p1[1] = 0.1  # one embryo misclassified
        np.save(clip_dir / "probs.npy", np.c_[1 - p1, p1].astype(np.float32))
    _seal(root)


def test_cli_on_handmade_latents_writes_every_output(tmp_path):
    _write_latents(tmp_path / "latents")
    out = tmp_path / "analysis"
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "latents"), "--out", str(out),
                                            "--cv_folds", "2"])
    summary = al.main(args)
    for name in ("summary.json", "per_embryo.csv", "outliers.csv", "speeds.csv", "tphate_embeddings.csv",
                 "persistence_diagrams.csv", "betti_curves.csv", "population.png", "speed_curves.png",
                 "outliers.png", "persistence.png", "roc_curve.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "tphate").glob("*.png"))) == 8
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["trajectories"]["n_embryos"] == 8
    assert on_disk["trajectories"]["embedding_methods"] == {"tphate": 8}
    assert on_disk["trajectories"]["outliers"]["embryos"] == ["00000_P0-1"]  # the fast mover
    assert len(on_disk["trajectories"]["per_embryo"]) == 8
    cls = summary["classification"]
    assert cls["source"].startswith("model classifier probabilities")
    assert cls["accuracy"] == pytest.approx(7 / 8) and cls["confusion_matrix"] == [[2, 0], [1, 5]]
    assert cls["by_split"]["train"]["n"] == 6 and cls["by_split"]["val"]["accuracy"] == pytest.approx(1.0)
    label = summary["probes"]["label"]  # the latents' own separability, beside its controls
    assert label["n_frames"] == 8 and label["n_embryos"] == 8 and label["n_groups"] == 4  # 4 patients
    assert label["grouped_by"] == "patient" and label["classes"] == [0, 1]
    probe = summary["phase_probe"]
    assert probe["n_frames"] == 6 * 30 and probe["n_embryos"] == 6
    assert "missing" in summary["probes"]["phase"]["linear"]["pixels"]
    assert summary["probes"]["hours"]["n_embryos"] == 6  # the two empty wells have no development to time
    assert (out / "probes.png").is_file() and "tphate_dropoff" in pd.read_csv(out / "per_embryo.csv")
    assert 0 <= probe["majority_baseline_accuracy"] <= 1 and 0 <= probe["accuracy"] <= 1
    betti = pd.read_csv(out / "betti_curves.csv")
    assert len(betti) == 8 * 100 and (betti["betti_0"] >= 1).all()


def test_cli_without_probabilities_reports_the_label_probe_alone(tmp_path):
    _write_latents(tmp_path / "latents", with_probs=False)
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "latents"), "--out", str(tmp_path / "a"),
                                            "--source", "clips", "--cv_folds", "2", "--max_embryo_plots", "0"])
    summary = al.main(args)
    assert summary["trajectory_source"].startswith("clips")
    assert summary["classification"] is None and not (tmp_path / "a" / "roc_curve.png").exists()
    label = summary["probes"]["label"]  # each clip's time-mean, folds grouped by patient
    assert label["folds"] == 2 and label["n_embryos"] == 8 and label["n_groups"] == 4
    linear = label["linear"]
    assert 0 <= linear["trained"]["balanced_accuracy"] <= 1 and 0 <= linear["majority"]["balanced_accuracy"] <= 1
    assert "missing" in linear["untrained"]  # clip latents have no controls
    assert summary["trajectories"]["embedding_methods"] == {"pca": 8}  # 4-frame clips: too short for T-PHATE
    assert not list((tmp_path / "a" / "tphate").glob("*.png"))


def test_split_analyses_only_the_held_out_wells(tmp_path):
    _write_latents(tmp_path / "latents")
    meta = pd.read_csv(tmp_path / "latents" / "trajectories" / "metadata.csv")
    meta["split"] = ["train"] * 5 + ["val"] * 3
    meta.to_csv(tmp_path / "latents" / "trajectories" / "metadata.csv", index=False)
    _seal(tmp_path / "latents")
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "latents"), "--out", str(tmp_path / "a"),
                                            "--split", "val", "--cv_folds", "2", "--max_embryo_plots", "0"])
    summary = al.main(args)
    assert summary["split"] == "val" and summary["trajectories"]["n_embryos"] == 3
    assert {e["cell_id"] for e in summary["trajectories"]["per_embryo"]} == set(meta["cell_id"][5:])
    args.split = "test"
    with pytest.raises(InputError, match="no trajectory of split test"):
        al.main(args)


def test_trim_start_drops_the_warm_up_frames(tmp_path):
    _write_latents(tmp_path / "latents")
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "latents"), "--out", str(tmp_path / "a"),
                                            "--trim_start", "5", "--cv_folds", "2", "--max_embryo_plots", "0"])
    summary = al.main(args)
    assert summary["trajectories"]["statistics_median"]["n_frames"] == 25
    speeds = pd.read_csv(tmp_path / "a" / "speeds.csv")
    assert speeds["frame_index"].min() == 6


@pytest.mark.parametrize("source", ["trajectories", "clips"])
def test_trajectories_shorter_than_3_frames_are_one_line_exit_2(tmp_path, capsys, source):
    _write_latents(tmp_path / "latents", n_frames=2)  # trajectories of 2 frames, clips of 1
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "latents"), "--out", str(tmp_path / "a"),
                                            "--trim_start", "0", "--source", source])
    assert run_main("analyze_latents.py", al.report, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no trajectory with at least 3 frames" in err
    assert not (tmp_path / "a").exists()


def test_phases_sort_in_developmental_order():
    assert probes.ordered_phases(["tB", "", "t2", "tPB2", "t9+", "zz"]) == ["tPB2", "t2", "t9+", "tB", "zz"]


def test_missing_latents_folder_is_a_clear_error(tmp_path):
    args = al.get_args_parser().parse_args(["--latents", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match="extract_latents.py"):
        al.main(args)
    (tmp_path / "nothing" / "trajectories").mkdir(parents=True)
    (tmp_path / "nothing" / "trajectories" / "metadata.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="info.json is missing: .* is incomplete or from an older extract_latents"):
        al.main(args)
    _seal(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"missing columns \['file', 'cell_id', 'label'\]"):
        al.main(args)


def _write_probe_latents(root, controls=True, n_embryos=6, n_frames=30, channels=8, n_pixels=64, untimed=()):
    """Trajectory files as extract_latents.py writes them: z carries the phase and the time since the first frame
    linearly; z_untrained and pixels (when written) carry only noise. The embryos in `untimed` have no times."""
    rng = np.random.default_rng(7)
    folder = root / "trajectories"
    folder.mkdir(parents=True)
    phase_dirs, time_dir = rng.normal(size=(3, channels)), rng.normal(size=channels)
    phase_index = np.repeat([0, 1, 2], n_frames // 3)
    rows = []
    for e in range(n_embryos):
        since_start = np.arange(n_frames) * 0.5
        z = 3.0 * phase_dirs[phase_index] + 0.3 * np.outer(since_start, time_dir)
        arrays = {"z": (z + 0.1 * rng.normal(size=z.shape)).astype(np.float32), "frame_indices": np.arange(n_frames),
                  "hours": (20.0 + 3 * e + since_start if e not in untimed else np.full(n_frames, np.nan)
                            ).astype(np.float32),  # each recording starts at another hour
                  "phase": np.array(["t2", "t4", "tB"])[phase_index]}
        if controls:
            arrays[UNTRAINED_KEY] = rng.normal(size=z.shape).astype(np.float32)
            arrays[PIXELS_KEY] = rng.uniform(size=(n_frames, n_pixels)).astype(np.float32)
        np.savez(folder / f"{e:05d}_E{e}.npz", **arrays)
        rows.append({"file": f"{e:05d}_E{e}.npz", "cell_id": f"E{e}", "label": 1})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return _seal(root)


def _analyse(tmp_path, latents, *flags):
    args = al.get_args_parser().parse_args(["--latents", str(latents), "--out", str(tmp_path / "analysis"),
                                            "--cv_folds", "3", "--max_embryo_plots", "0", *flags])
    return al.main(args)


def test_probes_report_the_trained_latents_beside_every_control(tmp_path):
    summary = _analyse(tmp_path, _write_probe_latents(tmp_path / "latents"), "--trim_start", "2")
    phase, hours = summary["probes"]["phase"], summary["probes"]["hours"]
    assert phase["n_frames"] == hours["n_frames"] == 6 * 28 and phase["n_embryos"] == 6
    linear = phase["linear"]
    assert linear["trained"]["balanced_accuracy"] > 0.9 and linear["trained"]["decoded"]["balanced_accuracy"] > 0.9
    assert linear["pixels"]["balanced_accuracy"] < 0.6 and linear["untrained"]["balanced_accuracy"] < 0.6
    assert linear["majority"]["balanced_accuracy"] == pytest.approx(1 / 3, abs=0.05)
    assert phase["margin_over_pixels"] > 0.3 and phase["margin_over_untrained"] > 0.3
    assert all(c["n_components"] in probes.pixel_widths(8, 64) for c in linear["pixels"]["chosen"])
    assert hours["unit"] == "hours" and hours["linear"]["trained"]["r2"] > 0.9 and hours["linear"]["trained"]["mae"] < 1
    assert hours["linear"]["pixels"]["r2"] < 0.3 and hours["linear"]["untrained"]["r2"] < 0.3
    assert hours["linear"]["majority"]["r2"] <= 0 and hours["margin_over_pixels"] > 0.6
    assert hours["wells"] == {"with_times": 6, "without_times_left_out": 0, "empty_wells_left_out": 0}
    assert summary["phase_probe"]["accuracy"] == linear["trained"]["accuracy"]  # the older key still holds
    events = pd.read_csv(tmp_path / "analysis" / "morphokinetics.csv")
    assert set(events["phase"]) == {"t2", "t4", "tB"}
    assert set(events["source"]) == {"trained", "untrained", "pixels", "majority", "median_onset"}
    assert phase["event_times"]["hours"]["mae"]["trained"] < 1.0  # the decoded onsets land on the annotated ones
    assert (tmp_path / "analysis" / "probes.png").is_file() and (tmp_path / "analysis" / "morphokinetics.png").is_file()


def test_wells_without_times_never_enter_the_hours_probe(tmp_path):
    summary = _analyse(tmp_path, _write_probe_latents(tmp_path / "latents", untimed=(0, 3)))
    hours = summary["probes"]["hours"]
    assert hours["n_embryos"] == 4 and hours["n_frames"] == 4 * 30 and hours["unit"] == "hours"
    assert hours["wells"] == {"with_times": 4, "without_times_left_out": 2, "empty_wells_left_out": 0}
    assert "frames" not in summary["probes"]
    phase = summary["probes"]["phase"]  # the phase probe keeps every embryo; the untimed ones' onsets in frames
    assert phase["n_embryos"] == 6 and phase["event_times"]["frames"]["n_embryos"] == 2
    assert phase["event_times"]["hours"]["n_embryos"] == 4


def test_without_any_times_the_time_probe_says_frames(tmp_path):
    summary = _analyse(tmp_path, _write_probe_latents(tmp_path / "latents", untimed=range(6)))
    assert "hours" not in summary["probes"]
    frames = summary["probes"]["frames"]
    assert frames["unit"] == "frames" and "frames" in frames["target"] and frames["n_embryos"] == 6
    assert frames["linear"]["trained"]["r2"] > 0.9


def test_missing_controls_are_reported_as_missing_and_probes_subsample(tmp_path):
    summary = _analyse(tmp_path, _write_probe_latents(tmp_path / "latents", controls=False),
                       "--probe_max_frames", "60")
    assert summary["probes"]["label"] is None  # every well holds an embryo: one class
    for probe in (summary["probes"]["phase"], summary["probes"]["hours"]):
        assert probe["n_frames"] == 6 * 30 and probe["fit_frames_at_most"] == 60  # fits on 60, predicts every frame
        for readout in probes.READOUTS:
            assert "z_untrained" in probe[readout]["untrained"]["missing"]
            assert "pixels" in probe[readout]["pixels"]["missing"] and probe["metric"] in probe[readout]["trained"]
        assert probe["margin_over_pixels"] is None and probe["margin_over_untrained"] is None
    assert (tmp_path / "analysis" / "probes.png").is_file()


def test_control_rows_must_match_the_latents(tmp_path):
    latents = _write_probe_latents(tmp_path / "latents")
    path = latents / "trajectories" / "00003_E3.npz"
    with np.load(path) as data:
        arrays = dict(data)
    np.savez(path, **{**arrays, PIXELS_KEY: arrays[PIXELS_KEY][:-1]})
    _seal(latents)
    with pytest.raises(InputError, match=r"00003_E3.npz: pixels has shape \(29, 64\), expected \(30, n\)"):
        _analyse(tmp_path, latents)
