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


def test_label_probe_separates_separable_recordings_with_folds_grouped_by_patient():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 5)) + 4.0 * y[:, None]
    groups = np.array([f"P{i // 4}" for i in range(40)])  # 10 patients of 4 embryos each
    result = probes.label_probe({"trained": x, "pixels": rng.normal(size=(40, 8))}, y, groups, n_splits=5)
    assert result["folds"] == 5 and result["classes"] == [0, 1] and result["n_groups"] == 10  # groups: patients
    assert result["trained"]["balanced_accuracy"] > 0.95 and result["pixels"]["balanced_accuracy"] < 0.8
    assert result["majority"]["balanced_accuracy"] == pytest.approx(0.5)


def test_phase_probe_beats_the_majority_baseline():
    rng = np.random.default_rng(2)
    phases = np.tile(np.repeat(["t2", "t4", "tB"], [10, 10, 20]), 6)  # 6 embryos x 40 frames
    centers = {"t2": 0.0, "t4": 3.0, "tB": 6.0}
    x = np.array([centers[p] for p in phases])[:, None] + rng.normal(scale=0.5, size=(240, 4))
    groups = np.repeat([f"E{i}" for i in range(6)], 40)
    result = probes.phase_probe({"trained": x, "untrained": "not extracted"}, phases, groups, n_splits=3)
    assert result["majority"]["accuracy"] == pytest.approx(0.5)
    assert result["majority"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["trained"]["accuracy"] > 0.9 and result["trained"]["balanced_accuracy"] > 0.9
    assert result["classes"] == ["t2", "t4", "tB"] and result["folds"] == 3
    assert result["untrained"] == {"missing": "not extracted"} and "missing" in result["pixels"]
    assert result["margin_over_pixels"] is None


def test_hours_probe_recovers_a_known_linear_relation():
    rng = np.random.default_rng(5)
    groups = np.repeat([f"E{i}" for i in range(5)], 30)
    hours = np.tile(np.arange(30) * 0.5, 5)  # 0 .. 14.5 h in every embryo
    x = np.c_[2.0 * hours + 3.0, rng.normal(size=(150, 3))]  # hours = (x0 - 3) / 2 exactly
    noise = rng.normal(size=(150, 4))
    result = probes.hours_probe({"trained": x, "untrained": noise, "pixels": rng.uniform(size=(150, 50))},
                                hours, groups, n_splits=5)
    assert result["metric"] == "r2" and result["folds"] == 5 and result["n_groups"] == 5
    assert result["trained"]["r2"] > 0.999 and result["trained"]["mae"] < 0.05
    assert result["majority"]["r2"] == pytest.approx(0.0, abs=1e-9)  # every fold's training mean is 7.25 h
    assert result["majority"]["mae"] == pytest.approx(np.abs(hours - 7.25).mean())
    assert result["untrained"]["r2"] < 0.2 and result["pixels"]["r2"] < 0.2
    assert result["pixels"]["pca_components"] == 4  # PCA to the latent width
    assert result["margin_over_pixels"] == pytest.approx(result["trained"]["r2"] - result["pixels"]["r2"])


def test_hours_probe_chooses_its_ridge_strength_by_embryo():
    """Features that follow time along a different direction in every embryo (as a well's own drift does)
    predict nothing in a new embryo: a ridge strength chosen by leaving out single frames fits them anyway
    (R^2 about -2.8 here), one chosen by leaving out whole embryos shrinks them away."""
    rng = np.random.default_rng(3)
    n_embryos, n_frames, width = 10, 30, 40
    groups = np.repeat([f"E{i}" for i in range(n_embryos)], n_frames)
    hours = np.tile(np.arange(n_frames) * 0.5, n_embryos)
    directions = np.repeat(rng.normal(size=(n_embryos, width)), n_frames, axis=0)
    x = hours[:, None] * directions + rng.normal(scale=0.5, size=(n_embryos * n_frames, width))
    result = probes.hours_probe({"trained": x}, hours, groups, n_splits=5)
    assert result["trained"]["r2"] > -0.5


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
    assert "missing" in summary["probes"]["phase"]["pixels"]
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
    assert 0 <= label["trained"]["balanced_accuracy"] <= 1 and 0 <= label["majority"]["balanced_accuracy"] <= 1
    assert "missing" in label["untrained"]  # clip latents have no controls
    assert summary["trajectories"]["embedding_methods"] == {"pca": 8}  # 4-frame clips: too short for T-PHATE
    assert not list((tmp_path / "a" / "tphate").glob("*.png"))


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


def _write_probe_latents(root, controls=True, n_embryos=6, n_frames=30, channels=8, n_pixels=64):
    """Trajectory files as extract_latents.py writes them: z carries the phase and the time since the first frame
    linearly; z_untrained and pixels (when written) carry only noise."""
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
                  "hours": (20.0 + 3 * e + since_start).astype(np.float32),  # each recording starts at another hour
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
    assert phase["trained"]["balanced_accuracy"] > 0.9
    assert phase["pixels"]["balanced_accuracy"] < 0.6 and phase["untrained"]["balanced_accuracy"] < 0.6
    assert phase["majority"]["balanced_accuracy"] == pytest.approx(1 / 3, abs=0.05)
    assert phase["margin_over_pixels"] > 0.3 and phase["pixels"]["pca_components"] == 8
    assert hours["unit"] == "hours" and hours["trained"]["r2"] > 0.9 and hours["trained"]["mae"] < 1.0
    assert hours["pixels"]["r2"] < 0.3 and hours["untrained"]["r2"] < 0.3 and hours["majority"]["r2"] <= 0
    assert hours["margin_over_pixels"] > 0.6
    assert summary["phase_probe"]["accuracy"] == phase["trained"]["accuracy"]  # the older key still holds
    assert (tmp_path / "analysis" / "probes.png").is_file()


def test_missing_controls_are_reported_as_missing_and_probes_subsample(tmp_path):
    summary = _analyse(tmp_path, _write_probe_latents(tmp_path / "latents", controls=False),
                       "--probe_max_frames", "60")
    assert summary["probes"]["label"] is None  # every well holds an embryo: one class
    for probe in (summary["probes"]["phase"], summary["probes"]["hours"]):
        assert probe["n_frames"] == 60
        assert "z_untrained" in probe["untrained"]["missing"] and "pixels" in probe["pixels"]["missing"]
        assert probe["margin_over_pixels"] is None and probe["metric"] in probe["trained"]
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
