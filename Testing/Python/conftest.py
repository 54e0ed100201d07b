"""Shared fixtures: the real built-in tool (loaded once per test run) and the bundled real cases."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# as the command line does first thing (tools/runtime.quiet_threads): idle OpenMP threads sleep instead of
# spinning; set here, before any test imports torch (spinning made SAM2 video tests 4x slower on 2 cores)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# bundled cases where a box is the right prompt (organs, bones); vessels/rings are kept for refinement tests
BOX_CASES = (
    "medscribble/BTCV/0763890-Image_axis1_maxslice",
    "medscribble/HipXRay/image_054_axis0_midslice",
    "sam-med2d/amos_0006_90_liver_000",
    "sam-med2d/s0114_111_aorta_000",
    "volumes/totalseg_ct_liver",
)
NON_SQUARE_CASE = "sam-med2d/s0114_111_aorta_000"  # 181 x 258


@pytest.fixture(scope="session")
def litemedsam():
    from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

    return LiteMedSAM(device="cpu")


@pytest.fixture(scope="session")
def bundled():
    """Bundled cases by id, loaded as 2D tasks."""
    from MedSAMAgentLib.manifest import bundled_manifest, load_case

    return {case.id: load_case(case) for case in bundled_manifest()}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds or runs full-size networks (deselect with -m 'not slow')")
