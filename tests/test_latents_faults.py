"""Issue 22: the latents and analysis folders are whole or absent under stop signals, full disks and concurrent runs;
the analysis refuses a folder that is half-written, a mix of two extractions or of two checkpoints, before it writes
anything; flags that do nothing are refused; extraction labels each row with the split of the run that trained the
checkpoint."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_analysis import _seal, _write_latents
from test_latents import checkpoint, latents, wells  # noqa: F401 (the session's fixtures)
from test_train_resume import run_with_a_group_signal_at_worker_start

import analyze_latents as al
import cli
import extract_latents
import latent_encoding
import latents_folder
import output_folder
from index_csv import split_of

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def other_checkpoint(checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    """B: checkpoint A's configuration with other weights (as another seed gives)."""
    saved = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    saved["model_state_dict"] = {k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point()
                                 else v for k, v in saved["model_state_dict"].items()}
    path = tmp_path_factory.mktemp("other") / "b.pt"
    torch.save(saved, path)
    return path


def files(folder: Path) -> dict:
    """Every file under folder with its bytes and mtime (the locks aside, which a run takes and releases)."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if not p.name.endswith(".lock"))


def extract(capsys, checkpoint_path, index, out, *flags) -> tuple[int, str]:
    args = extract_latents.get_args_parser().parse_args(["--checkpoint", str(checkpoint_path), "--index_csv",
                                                          str(index), "--out", str(out), "--device", "cpu", *flags])
    code = cli.run_main("extract_latents.py", extract_latents.run, args)
    return code, capsys.readouterr().err.strip()


def analyse(capsys, latents_dir, out, *flags) -> tuple[int, str]:
    args = al.get_args_parser().parse_args(["--latents", str(latents_dir), "--out", str(out), "--cv_folds", "2",
                                            "--max_embryo_plots", "0", *flags])
    code = cli.run_main("analyze_latents.py", al.report, args)
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> str:
    assert len(err.splitlines()) == 1, err
    return err


# 1, 5. a stop signal during extraction: nothing of it kept, the previous latents as they were
@pytest.mark.parametrize("mode,name", [("trajectory", "SIGTERM"), ("clips", "SIGINT"), ("trajectory", "SIGUSR1")])
def test_a_stopped_extraction_leaves_the_previous_latents_as_they_were(mode, name, latents, other_checkpoint,  # noqa: F811
                                                                       wells, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    before, calls = files(out), []
    if mode == "trajectory":  # after its second .npz
        write = cli.atomic_write

        def hook(path, writer):
            write(path, writer)
            calls.append(path)
            if len(calls) == 2:
                signal.raise_signal(getattr(signal, name))

        monkeypatch.setattr(cli, "atomic_write", hook)
    else:  # inside its first batch
        pool = latent_encoding.pool_space

        def hook(z, how):
            calls.append(z)
            if len(calls) == 2:
                signal.raise_signal(getattr(signal, name))
            return pool(z, how)

        monkeypatch.setattr(extract_latents, "pool_space", hook)  # clips
        monkeypatch.setattr(latent_encoding, "pool_space", hook)  # trajectories
    code, err = extract(capsys, other_checkpoint, wells, out, "--mode", mode, "--num_workers", "0", "--batch_size", "3")
    folder = out / extract_latents.SUBFOLDERS[mode]
    assert code == cli.stop_exit_code(name)
    assert one_line(err) == (f"extract_latents.py: {name}: extraction stopped, nothing of it kept; {folder} is as it "
                             f"was; exit {code}")
    assert files(out) == before and leftovers(out) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# 2. two extractions into one folder at once
def test_an_extraction_into_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(latents, checkpoint, wells,  # noqa: F811
                                                                                   tmp_path, capsys):
    out = shutil.copytree(latents, tmp_path / "latents")
    folder, before = out / "trajectories", files(out)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, output_folder\n"
                               "held = output_folder.OutputFolder(sys.argv[1], '--out', 'extraction', ())\n"
                               "held.lock.__enter__()\n"
                               "print('locked', flush=True)\ntime.sleep(300)", str(folder)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = extract(capsys, checkpoint, wells, out, "--mode", "trajectory")
        assert code == 2 and f"{folder} is in use by a running extraction (pid {holder.pid} on" in one_line(err)
        code, err = analyse(capsys, out, tmp_path / "analysis")  # and the analysis waits for it too
        assert code == 2 and f"{folder} is being written by a running extraction (pid {holder.pid}" in one_line(err)
        assert files(out) == before and not (tmp_path / "analysis").exists()
    finally:
        holder.kill()
        holder.wait()
    code, err = extract(capsys, checkpoint, wells, out, "--mode", "trajectory")
    assert code == 0 and f"Taking over {out / '.trajectories.lock'} left by a run that ended without releasing " \
                          f"it (pid {holder.pid}" in err


# 3. a full disk: exit 74, one line, the previous latents or analysis as they were, no staging folder left
@pytest.mark.parametrize("mode,nth", [("trajectory", 3), ("clips", 1), ("clips", 2)])  # clips: metadata, info.json
def test_disk_full_while_extracting_exits_74_and_keeps_the_previous_latents(mode, nth, latents, checkpoint,  # noqa: F811
                                                                            wells, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    before, calls, write = files(out), [], cli.atomic_write

    def full(path, writer):
        calls.append(Path(path))

        def no_space(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        write(path, no_space if len(calls) == nth else writer)

    monkeypatch.setattr(cli, "atomic_write", full)
    code, err = extract(capsys, checkpoint, wells, out, "--mode", mode, "--num_workers", "0")
    assert code == 74
    assert one_line(err).startswith(f"extract_latents.py: error: cannot write {calls[-1]} (No space left on device)")
    assert files(out) == before and leftovers(out) == []


def test_disk_full_while_allocating_the_clip_arrays_exits_74(latents, checkpoint, wells, tmp_path, capsys,  # noqa: F811
                                                             monkeypatch):
    """The memory-mapped arrays are allocated at once: a full disk is an error there, not a SIGBUS later."""
    out = shutil.copytree(latents, tmp_path / "latents")
    before = files(out)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    code, err = extract(capsys, checkpoint, wells, out, "--mode", "clips", "--num_workers", "0")
    assert code == 74 and "(No space left on device)" in one_line(err)
    assert files(out) == before and leftovers(out) == []


@pytest.fixture(scope="module")
def analysis(latents, tmp_path_factory) -> Path:  # noqa: F811
    """An analysis of the session's latents (8 embryos)."""
    out = tmp_path_factory.mktemp("analysis") / "analysis"
    args = al.get_args_parser().parse_args(["--latents", str(latents), "--out", str(out), "--cv_folds", "2",
                                            "--max_embryo_plots", "0"])
    assert al.report(args) == 0
    return out


def test_disk_full_while_analysing_exits_74_and_keeps_the_previous_analysis(latents, analysis, tmp_path, capsys,  # noqa: F811
                                                                            monkeypatch):
    out = shutil.copytree(analysis, tmp_path / "analysis")
    before, to_csv = files(out), pd.DataFrame.to_csv

    def full(self, path=None, *args, **kwargs):
        if str(path).endswith("speeds.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, err = analyse(capsys, latents, out)
    assert code == 74 and "speeds.csv (No space left on device)" in one_line(err)
    assert files(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage,message", [
    ("empty info.json", "trajectories/info.json cannot be used (JSONDecodeError)"),
    ("truncated .npz", "bytes, not"),
    ("truncated .npz, sealed again", "cannot be read (BadZipFile)"),
    ("empty probs.npy", "clips/probs.npy is 0 bytes, not"),
    ("empty probs.npy, sealed again", "clips/probs.npy: cannot be read"),
    ("no info.json", "trajectories/info.json is missing"),
])
def test_damaged_latents_are_refused_with_one_line(damage, message, latents, tmp_path, capsys):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    first = sorted((out / "trajectories").glob("*.npz"))[0]
    if damage == "empty info.json":
        (out / "trajectories" / "info.json").write_bytes(b"")
    elif damage == "no info.json":
        (out / "trajectories" / "info.json").unlink()
    elif ".npz" in damage:
        first.write_bytes(first.read_bytes()[:len(first.read_bytes()) // 2])
    else:
        (out / "clips" / "probs.npy").write_bytes(b"")
    if "sealed again" in damage:
        for name in ("trajectories", "clips"):
            info = json.loads((out / name / "info.json").read_text())
            latents_folder.seal(out / name, info)
    code, err = analyse(capsys, out, tmp_path / "analysis")
    assert code == 2 and message in one_line(err), err
    assert not (tmp_path / "analysis").exists()


# 4, 5. a stop signal during the analysis: the previous analysis as it was
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stopped_analysis_leaves_the_previous_analysis_as_it_was(name, latents, analysis, tmp_path, capsys,  # noqa: F811
                                                                   monkeypatch):
    out = shutil.copytree(analysis, tmp_path / "analysis")
    before, probe = files(out), al.analyse_probes

    def signal_then_probe(trajectories, out, args):
        signal.raise_signal(getattr(signal, name))
        return probe(trajectories, out, args)

    monkeypatch.setattr(al, "analyse_probes", signal_then_probe)
    code, err = analyse(capsys, latents, out)
    assert code == cli.stop_exit_code(name)
    assert one_line(err) == f"analyze_latents.py: {name}: analysis stopped, nothing of it kept; {out} is as it was; " \
                            f"exit {code}"
    assert files(out) == before and leftovers(tmp_path) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classification"] is not None  # the model classifier's metrics, printed as "classifier AUC"


def test_report_names_the_classifier_auc_only_for_the_models_classifier(latents, tmp_path, capsys):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    for target, with_probs in ((tmp_path / "a", True), (tmp_path / "b", False)):
        if not with_probs:  # no classifier probabilities: the latents' label probe only, never called the classifier
            (out / "clips" / "probs.npy").unlink()
            latents_folder.seal(out / "clips", json.loads((out / "clips" / "info.json").read_text()))
        args = al.get_args_parser().parse_args(["--latents", str(out), "--out", str(target), "--cv_folds", "2",
                                                "--max_embryo_plots", "0", "--source", "clips"])
        assert al.report(args) == 0
        assert ("; classifier AUC " in capsys.readouterr().out) == with_probs


# 6. a group signal while the extraction's loader workers start
def test_a_group_signal_as_extraction_workers_start_spares_them(latents, checkpoint, wells, tmp_path):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    before = files(out)
    result = run_with_a_group_signal_at_worker_start(
        "val", "SIGTERM", "extract_latents", "--checkpoint", str(checkpoint), "--index_csv", str(wells), "--out",
        str(out), "--mode", "clips", "--device", "cpu", "--num_workers", "2", "--batch_size", "2")
    assert result.returncode == 85, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"extract_latents.py: SIGTERM: extraction stopped, nothing of it "
                                                      f"kept; {out / 'clips'} is as it was; exit 85")
    assert "Traceback" not in result.stderr and files(out) == before and leftovers(out) == []


# 7. every row labelled with the split of the run that trained the checkpoint
def test_rows_are_labelled_with_the_split_of_the_run_that_trained_the_checkpoint(checkpoint, wells, tmp_path,  # noqa: F811
                                                                                 capsys):
    """The training index plus two new patients: the run's own split decides (a checkpoint that predates stored
    splits: its index.csv split again with its seed and val_fraction), and wells it never saw are `unseen`."""
    index = pd.read_csv(wells, dtype=str, keep_default_na=False)
    index["path"] = [str(wells.parent / p) for p in index["path"]]
    new = index.head(2).assign(embryo_id=["NEW1-1", "NEW2-1"], patient_id=["NEW1", "NEW2"])
    pd.concat([index, new]).to_csv(tmp_path / "grown.csv", index=False)
    run = split_of(wells, 0.2, 0)  # the checkpoint's run: val_fraction 0.2, seed 0 on the training index
    expected = [run[e] for e in index["embryo_id"]] + ["unseen", "unseen"]
    assert extract(capsys, checkpoint, tmp_path / "grown.csv", tmp_path / "old", "--num_workers", "0")[0] == 0
    meta = pd.read_csv(tmp_path / "old" / "clips" / "metadata.csv")
    assert meta["split"].tolist() == expected
    info = json.loads((tmp_path / "old" / "clips" / "info.json").read_text())
    assert info["dataset"]["split_of_rows"].endswith("split with the run's seed 0 and val_fraction 0.2")
    stored = torch.load(checkpoint, weights_only=True)  # train.py stores the run's split in every checkpoint
    stored["split"] = {e: "val" if k < 3 else "train" for k, e in enumerate(index["embryo_id"])}
    torch.save(stored, tmp_path / "new.pt")
    assert extract(capsys, tmp_path / "new.pt", tmp_path / "grown.csv", tmp_path / "new", "--num_workers", "0",
                   "--split", "val")[0] == 0
    meta = pd.read_csv(tmp_path / "new" / "clips" / "metadata.csv")
    assert meta["cell_id"].tolist() == index["embryo_id"].tolist()[:3] and set(meta["split"]) == {"val"}
    assert extract(capsys, tmp_path / "new.pt", tmp_path / "grown.csv", tmp_path / "unseen", "--split", "unseen",
                   "--mode", "trajectory")[0] == 0
    assert pd.read_csv(tmp_path / "unseen" / "trajectories" / "metadata.csv")["cell_id"].tolist() == ["NEW1-1",
                                                                                                    "NEW2-1"]


# 8. the analysis checks everything before it writes anything
@pytest.mark.parametrize("case,message", [
    ("two widths", "z has 12 values a frame but 00000_P0-1.npz has 6 (latents pooled two ways?)"),
    ("NaN", "00000_P0-1.npz: z holds NaN or infinite values"),
    ("--ph_max_points -5", "--ph_max_points must be at least 10, got -5"),
    ("--ph_max_points 1", "--ph_max_points must be at least 10, got 1"),
    ("--probe_max_frames 2", "--probe_max_frames must be at least 50, got 2"),
    ("--outlier_threshold nan", "--outlier_threshold must be a finite number, got nan"),
    ("--out a file", "must name a folder of its own, not a file or a root"),
    ("--out the latents", "would replace or sit inside the latents it reads"),
    ("--out with other files", "is not this script's output (it holds notes.txt), so it is not replaced"),
    ("--out with CSVs alone", "is not this script's output (it holds no summary.json), so it is not replaced"),
    ("a staging leftover", "was left by a run that did not finish"),
])
def test_the_analysis_refuses_bad_input_before_writing_anything(case, message, tmp_path, capsys):
    folder = tmp_path / "latents"
    _write_latents(folder)
    out, flags = tmp_path / "analysis", case.split() if case.startswith("--") and case.split()[0] != "--out" else []
    if case in ("two widths", "NaN"):
        path = sorted((folder / "trajectories").glob("*.npz"))[0 if case == "NaN" else 5]
        with np.load(path) as data:
            arrays = dict(data)
        arrays["z"] = np.c_[arrays["z"], arrays["z"]] if case == "two widths" else arrays["z"]
        arrays["z"][2, 1] = np.nan if case == "NaN" else arrays["z"][2, 1]
        np.savez(path, **arrays)
        _seal(folder)
    elif case == "--out a file":
        out.write_text("mine")
    elif case == "--out the latents":
        out = folder
    elif case.startswith("--out with"):  # a folder of the user's, not an earlier analysis
        out.mkdir()
        (out / ("notes.txt" if "other" in case else "mine.csv")).write_text("mine")
    elif case == "a staging leftover":  # an extraction killed (SIGKILL) before it swapped its output in
        (folder / ".clips.12345.staging").mkdir()
    before = files(tmp_path)
    code, err = analyse(capsys, folder, out, *flags)
    assert code == 2 and message in one_line(err), err
    assert files(tmp_path) == before and leftovers(tmp_path) == ([".clips.12345.staging"] if "staging" in case else [])


def test_the_analysis_refuses_latents_of_two_checkpoints_or_two_extractions(latents, checkpoint, other_checkpoint,  # noqa: F811
                                                                             wells, tmp_path, capsys):  # noqa: F811
    out = shutil.copytree(latents, tmp_path / "latents")
    assert extract(capsys, other_checkpoint, wells, tmp_path / "b", "--mode", "trajectory", "--frame_step", "2")[0] == 0
    stray = sorted((tmp_path / "b" / "trajectories").glob("*.npz"))[2]
    shutil.copy(stray, out / "trajectories")  # B's file over A's, of the same size
    code, err = analyse(capsys, out, tmp_path / "analysis")
    b_id = json.loads((tmp_path / "b" / "trajectories" / "info.json").read_text())["extraction_id"]
    assert code == 2 and f"{stray.name} was written by extraction {b_id[:8]}, not" in one_line(err)
    shutil.rmtree(out / "trajectories")
    shutil.copytree(tmp_path / "b" / "trajectories", out / "trajectories")  # B's trajectories beside A's clips
    code, err = analyse(capsys, out, tmp_path / "analysis")
    assert code == 2 and f"of {other_checkpoint} (epoch 1" in one_line(err) and f"of {checkpoint} (epoch 1" in err
    assert "extract both from one checkpoint" in err and not (tmp_path / "analysis").exists()
    assert analyse(capsys, out, tmp_path / "analysis", "--source", "clips")[0] == 0  # clips alone are one extraction


# 10. flags that do nothing, or that are out of range, are refused before anything is written
@pytest.mark.parametrize("flags,message", [
    (("--mode", "clips", "--no_controls"), "--no_controls does nothing in --mode clips"),
    (("--mode", "clips", "--frame_step", "2"), "--frame_step does nothing in --mode clips"),
    (("--mode", "clips", "--chunk_len", "8"), "--chunk_len does nothing in --mode clips"),
    (("--mode", "trajectory", "--seq_len", "8"), "--seq_len does nothing in --mode trajectory"),
    (("--mode", "trajectory", "--sampling", "window"), "--sampling does nothing in --mode trajectory"),
    (("--mode", "trajectory", "--chunk_len", "0"), "--chunk_len must be at least 1, got 0"),
])
def test_extraction_flags_that_do_nothing_are_refused(flags, message, checkpoint, wells, tmp_path, capsys):  # noqa: F811
    code, err = extract(capsys, checkpoint, wells, tmp_path / "out", *flags)
    assert code == 2 and message in one_line(err) and not (tmp_path / "out").exists()


def test_rows_skipped_as_unreadable_are_listed_in_info_json(checkpoint, wells, tmp_path, capsys):  # noqa: F811
    index = pd.read_csv(wells, dtype=str, keep_default_na=False).head(3)
    index["path"] = [str(wells.parent / p) for p in index["path"]]
    index.loc[1, "path"], index.loc[1, "embryo_id"] = str(tmp_path / "nowhere"), "GONE-1"
    index.to_csv(tmp_path / "index.csv", index=False)
    for mode in ("clips", "trajectory"):
        code, _ = extract(capsys, checkpoint, tmp_path / "index.csv", tmp_path / "out", "--mode", mode, "--skip_bad")
        assert code == 0
        info = json.loads((tmp_path / "out" / extract_latents.SUBFOLDERS[mode] / "info.json").read_text())
        assert info["skipped"] == ["GONE-1"]


# the output folder itself (output_folder.OutputFolder): swapped in whole, leftovers of a killed run cleared
def test_output_folder_swaps_in_whole_and_clears_a_killed_runs_leftovers(tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.csv").write_text("old")
    with pytest.raises(ValueError), output_folder.OutputFolder(target, "--out", "test", ("*.csv",)).check() as staging:
        (staging / "a.csv").write_text("new")
        raise ValueError  # an error: the previous folder stays, the staging folder goes
    assert (target / "a.csv").read_text() == "old" and leftovers(tmp_path) == []
    os.replace(target, tmp_path / ".out.999.old")  # killed between the two renames of a swap
    reader = output_folder.OutputFolder(target, "--out", "test", ("*.csv",))
    assert "left by a run killed while it swapped it in; run that command again" in reader.unfinished()
    (tmp_path / ".out.998.staging").mkdir()  # and another run killed before it swapped
    assert "was left by a run that did not finish" in reader.unfinished()
    output = output_folder.OutputFolder(target, "--out", "test", ("*.csv",)).check()
    with output as staging:
        err = capsys.readouterr().err
        assert "Put back" in err and "Removed" in err and (target / "a.csv").read_text() == "old"
        (staging / "a.csv").write_text("new")
        output.commit()
    assert (target / "a.csv").read_text() == "new" and leftovers(tmp_path) == [] and reader.unfinished() is None
