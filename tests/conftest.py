"""Fixtures shared by the training tests."""

from pathlib import Path

import pytest

from make_synthetic_data import make_synthetic_dataset


@pytest.fixture(scope="module")
def index_csv(tmp_path_factory) -> Path:
    """8 synthetic wells of 8 frames at 32 px (video-row index.csv with labels and patients)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_embryos=8, n_frames=8, size=32, seed=0)
