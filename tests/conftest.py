"""Fixtures shared by the tests: synthetic wells, and the devices present (CPU always, CUDA when visible)."""

from pathlib import Path

import pytest
import torch

from make_synthetic_data import make_synthetic_dataset

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device present: the device-aware tests run on the CPU here and on the GPU in gpu_check.py."""
    return torch.device(request.param)


@pytest.fixture(scope="module")
def index_csv(tmp_path_factory) -> Path:
    """8 synthetic wells of 8 frames at 32 px (video-row index.csv with labels and patients)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_embryos=8, n_frames=8, size=32, seed=0)
