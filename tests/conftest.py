"""Shared fixtures: paths to the real test cubes and small seeded synthetic cubes.

Hypothesis runs derandomized (the same examples every run), so that `make test`, the
CI gate, passes or fails the same way each time; `make fuzz` explores new random
examples (``LAYERCLIP_HYPOTHESIS=explore``, ten runs).
"""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("LAYERCLIP_HYPOTHESIS", "deterministic"))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Folder of the real cubes in ../shared/data (tests skip where it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test cubes not found: {SHARED_DATA} is missing")
    return SHARED_DATA


@pytest.fixture(scope="session")
def miri_s3d(shared_data):
    path = shared_data / "miri_mrs_simulated_s3d.fits"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def small_cube():
    """A small seeded synthetic arc cube (400 planes) with known artifacts."""
    from layerclip.simulate import make_cube

    return make_cube("arc", shape=(400, 31, 31), seed=7, n_artifacts=40, fov_size=22,
                     wave_range=(1.14, 1.19))


@pytest.fixture()
def rng():
    return np.random.default_rng(12345)
