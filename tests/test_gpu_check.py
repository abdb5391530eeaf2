"""gpu_check.py --dry_run: the GPU check's own code path (every step, the batch search, the JSON and the table) at a
toy size on the CPU, so that the script a GPU session runs has been run here; and its parts that a GPU session cannot
afford to find broken: the record kept after every step, the batch search's failures, the offline install."""

import base64
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step_and_writes_the_figures(tmp_path):
    out = tmp_path / "gc"
    run = subprocess.run([sys.executable, "gpu_check.py", "--dry_run", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert list(result["steps"]) == ["device_tests", "synthetic_data", "train_3_epochs_amp", "torchrun_1_process",
                                     "extract_trajectories", "bench_eager_b4", "batch_search", "bench_off_b4"]
    assert all(step["ok"] for step in result["steps"].values()) and result["finished"] and result["failed"] == []
    for name in ("bench_eager_b4", "bench_off_b4"):
        row = result["summary"]["bench"][name]
        assert row["batch_size"] == 4 and row["clips_per_s"] > 0 and row["share_of_bf16_matmul"] > 0
        assert row["peak_memory_mb"] > 0 and row["projected_50_epochs_min"] == 50 * 13_300 / row["clips_per_s"] / 60
    loader = result["summary"]["loader"]  # beside the eager step, at the same batch
    assert loader["num_workers"] == gpu_check.cli.resolve_num_workers("auto", "cpu")
    eager = result["summary"]["bench"]["bench_eager_b4"]
    assert loader["cached_clips_per_s"] > 0 and loader["model_clips_per_s"] == eager["clips_per_s"]
    assert f"{loader['limited_by']} limits" in run.stdout
    assert len(result["summary"]["train_clips_per_s"]) == 3
    assert result["summary"]["extract"]["n_embryos"] == 8
    search = result["batch_search"]
    assert (search["largest_batch"], search["first_failing_batch"], search["stopped"]) == (4, None, "cap")
    assert [t["batch"] for t in search["trials"]] == [1, 2, 4] and all(t["ok"] for t in search["trials"])
    log = (out / "gpu_check.log").read_text()
    assert "loader workers" in log  # train.py's run plan
    assert {p.name for p in out.iterdir()} == {"gpu_check.json", "gpu_check.log", "bench_eager_b4.json",
                                               "bench_off_b4.json"}  # the record only
    work = Path(result["steps"]["synthetic_data"]["command"].split("--out ")[1].split()[0]).parent
    assert work.name.startswith("gpu_check_") and not work.exists()  # the temporary WORK, gone
    assert "every step passed" in run.stdout and "50 epochs" in run.stdout and "stopped: cap" in run.stdout


def test_the_record_is_on_disk_after_every_step_and_a_time_out_of_an_optional_step_is_no_failure(tmp_path):
    size = gpu_check.SIZES["dry_run"]
    check = gpu_check.Check(tmp_path, tmp_path, size, {}, ["device_tests", "train", "bench_compiled"])
    check.run("first", [sys.executable, "-c", "print('hello')"], "device_tests")
    record = json.loads((tmp_path / "gpu_check.json").read_text())  # a crash from here on keeps this
    assert record["steps"]["first"]["ok"] and not record["finished"]
    check.run("second", [sys.executable, "-c", "import sys; sys.exit(3)"], "train")
    check.start -= size["budget_s"]  # the budget spent: the next step gets the least limit, 1 s
    grandchild = tmp_path / "grandchild.pid"  # as torchrun's ranks are to torchrun
    spawn = (f"import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
             f"time.sleep(600)']); open({str(grandchild)!r}, 'w').write(str(child.pid)); time.sleep(600)")
    check.run("optional", [sys.executable, "-c", spawn], "bench_compiled", optional=True)
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["second"]["returncode"] == 3 and steps["optional"]["returncode"] == "timeout"
    assert steps["optional"]["limit_s"] == 1
    if grandchild.is_file():  # started within the second: the time-out ended it too (SIGKILL, at most moments late)
        pid = int(grandchild.read_text())
        for _ in range(100):
            if not running(pid):
                break
            time.sleep(0.1)
        assert not running(pid)
    assert check.failed() == ["second"]
    assert "hello" in (tmp_path / "gpu_check.log").read_text()


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (killed, but not yet reaped by its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_limits_leave_the_later_steps_their_shares(tmp_path):
    check = gpu_check.Check(tmp_path, tmp_path, gpu_check.SIZES["gpu"], {}, ["device_tests", "train", "extract"])
    later = gpu_check.SHARES["train"] + gpu_check.SHARES["extract"]
    assert gpu_check.BUDGET_S - later - 5 < check.limit_s("device_tests") <= gpu_check.BUDGET_S - later
    assert check.plan == ["train", "extract"]
    assert sum(gpu_check.SHARES.values()) + gpu_check.SHARES["bench_compiled"] == gpu_check.BUDGET_S  # 2 modes: 8 min


def fake_step(works_up_to: int, error: Exception):
    def trial(b: int):
        if b > works_up_to:
            raise error
        return b / 100  # "GiB"

    return trial


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore lines")])
def test_batch_search_takes_any_failure_as_the_bound_and_says_so(error):
    seen = []
    found = gpu_check.search_batch(fake_step(700, error), 8, 4096, lambda: False, seen.append)
    # 8 .. 512 work, 1024 fails; bisection to 1/16 of the batch: 768 fails, 640 works, 704 fails, 672 works
    assert [t["batch"] for t in found["trials"]] == [8, 16, 32, 64, 128, 256, 512, 1024, 768, 640, 704, 672]
    assert seen == found["trials"]
    assert (found["largest_batch"], found["first_failing_batch"], found["peak_gib_at_largest"]) == (672, 704, 6.72)
    first_line = str(error).splitlines()[0]
    assert found["stopped"] == f"failed at 704: {type(error).__name__}: {first_line}"
    assert found["trials"][-2]["error"] == f"{type(error).__name__}: {first_line}"


def test_batch_search_stops_at_the_cap_or_the_deadline_and_never_calls_a_deadline_a_cap():
    assert gpu_check.search_batch(fake_step(10**6, RuntimeError()), 8, 64, lambda: False)["stopped"] == "cap"
    calls = iter(range(100))
    found = gpu_check.search_batch(fake_step(10**6, RuntimeError()), 8, 4096, lambda: next(calls) >= 3)
    assert (found["largest_batch"], found["first_failing_batch"], found["stopped"]) == (32, None, "deadline")
    calls = iter(range(100))  # the deadline during the bisection: the failure is still reported
    found = gpu_check.search_batch(fake_step(100, RuntimeError("boom")), 8, 4096, lambda: next(calls) >= 5)
    assert (found["largest_batch"], found["first_failing_batch"], found["stopped"]) == (64, 128, "deadline")
    found = gpu_check.search_batch(fake_step(4, RuntimeError("no GPU memory at all")), 8, 4096, lambda: False)
    assert (found["largest_batch"], found["stopped"]) == (None, "failed at 8: RuntimeError: no GPU memory at all")


def fake_wheel(folder: Path) -> Path:
    """A pure-Python wheel of the module gpu_check_fake_pkg (VALUE = 7), as pip download would save one."""
    files = {"gpu_check_fake_pkg/__init__.py": "VALUE = 7\n",
             "gpu_check_fake_pkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-fake-pkg\n"
                                                          "Version: 0.1\n",
             "gpu_check_fake_pkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                       "Tag: py3-none-any\n"}
    digest = {name: base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
              for name, text in files.items()}
    record = "".join(f"{name},sha256={digest[name]},{len(text)}\n" for name, text in files.items())
    files["gpu_check_fake_pkg-0.1.dist-info/RECORD"] = record + "gpu_check_fake_pkg-0.1.dist-info/RECORD,,\n"
    folder.mkdir()
    wheel = folder / "gpu_check_fake_pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_a_missing_package_is_installed_from_its_wheel_into_out_site(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # prepare_packages puts OUT/site in front
    needed = {"json": "json", "gpu_check_fake_pkg": "gpu-check-fake-pkg"}
    assert gpu_check.prepare_packages(tmp_path / "no_wheels", tmp_path / "none", needed)[1] == ["gpu-check-fake-pkg"]
    env, missing = gpu_check.prepare_packages(tmp_path / "out", fake_wheel(tmp_path / ".whl").parent, needed)
    assert missing == [] and (tmp_path / "out" / "site" / "gpu_check_fake_pkg" / "__init__.py").is_file()
    run = subprocess.run([sys.executable, "-c", "import gpu_check_fake_pkg as p; print(p.VALUE)"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "7", run.stderr  # the steps' subprocesses find it too


def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    earlier = tmp_path / "earlier"  # an earlier check's folder: its runs would resume, its figures mix in
    earlier.mkdir()
    (earlier / "gpu_check.json").write_text("{}")
    new = str(tmp_path / "new")
    cases = {"--compile_modes takes": ["--out", new, "--compile_modes", "fast"],
             "--out": ["--out", str(earlier)], "--work": ["--out", new, "--work", str(earlier)]}
    for message, flags in cases.items():
        args = gpu_check.get_args_parser().parse_args(["--dry_run", *flags])
        assert gpu_check.cli.run_main("gpu_check.py", gpu_check.main, args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err
    assert not Path(new).exists() and (earlier / "gpu_check.json").read_text() == "{}"
