"""LiteMedSAM's encoder on OpenVINO (tools/runtime.py): equal to eager torch on bundled real images, cached
under a checked key, and eager torch whenever OpenVINO is missing or fails. Speed is the benchmark's
(Testing/benchmarks/bench_speed.py), never asserted here."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.tools import runtime
from MedSAMAgentLib.tools.base import ToolError
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

CASES = ("medscribble/HipXRay/image_054_axis0_midslice", "sam-med2d/s0114_111_aorta_000",
         "medscribble/SCD/p7_axis2_midslice")


@pytest.fixture(scope="module")
def eager():
    return LiteMedSAM(device="cpu", runtime="torch")


def test_openvino_path_equals_eager_on_bundled_images(litemedsam, eager, bundled):
    litemedsam.set_image(bundled[CASES[0]].image)
    assert litemedsam.backend == "openvino"  # the default on the CPU, exported at first use
    for case_id in CASES:
        case = bundled[case_id]
        actions = [gt_box(case.ground_truth)]
        masks = []
        for tool in (litemedsam, eager):
            tool.set_image(case.image)
            masks.append(tool.predict(actions, None).mask)
        difference = float((litemedsam._embedding - eager._embedding).abs().max())
        assert difference < 1e-3, case_id
        assert dice(masks[0], masks[1]) > 0.999
        # the click protocol's masks follow, click after click
        for _ in range(3):
            click = corrective_click(masks[1], case.ground_truth)
            if click is None:
                break
            actions.append(click)
            masks = [tool.predict(actions, None).mask for tool in (litemedsam, eager)]
            assert abs(dice(masks[0], case.ground_truth) - dice(masks[1], case.ground_truth)) <= 0.002
    assert eager.backend == "torch"


def test_the_converter_sends_no_telemetry(litemedsam, bundled):
    """OpenVINO's converter reports usage to Google Analytics unless opted out; ours runs on its no-op stub."""
    litemedsam.set_image(bundled[CASES[0]].image)
    runtime.import_openvino()
    from openvino.tools.ovc import convert_impl, telemetry_stub

    assert sys.modules["openvino_telemetry"] is None
    assert convert_impl.tm is telemetry_stub


def test_cached_model_is_used_only_when_its_key_and_files_check(litemedsam, bundled, tmp_path):
    litemedsam.set_image(bundled[CASES[0]].image)
    folder = litemedsam._encoder.folder  # this run's export (or the cache's copy)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    loaded = runtime.openvino_encoder(litemedsam.net.image_encoder, litemedsam.weights_sha256, cache=tmp_path)
    assert not loaded.exported  # read from the cache, not exported again
    np.testing.assert_allclose(loaded(runtime.check_input()), litemedsam._encoder(runtime.check_input()),
                               atol=1e-5)
    import openvino

    version = openvino.__version__
    assert runtime._cached_ok(copy, litemedsam.weights_sha256, version)
    assert not runtime._cached_ok(copy, "0" * 64, version)  # other weights
    assert not runtime._cached_ok(copy, litemedsam.weights_sha256, version + "-other")  # another OpenVINO
    with (copy / "encoder.bin").open("r+b") as handle:  # a corrupted file
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert not runtime._cached_ok(copy, litemedsam.weights_sha256, version)


def test_eager_torch_when_openvino_is_missing_or_fails(litemedsam, eager, bundled, monkeypatch):
    case = bundled[CASES[1]]
    eager.set_image(case.image)
    expected = eager._embedding.numpy()
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" now raises ImportError
    with pytest.warns(RuntimeWarning, match="not installed.*eager torch"):
        encode, backend = runtime.encoder_for(litemedsam.net.image_encoder, litemedsam.weights_sha256)
    assert backend == "torch"
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated export failure")

    monkeypatch.setattr(runtime, "openvino_encoder", broken)
    tool = LiteMedSAM(device="cpu")
    with pytest.warns(RuntimeWarning, match="simulated export failure.*eager torch"):
        tool.set_image(case.image)
    assert tool.backend == "torch"
    np.testing.assert_array_equal(tool._embedding.numpy(), expected)
    with pytest.raises(ToolError, match="'openvino' or 'torch'"):
        LiteMedSAM(device="cpu", runtime="tensorrt")


def test_quiet_threads_keeps_a_users_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    runtime.quiet_threads()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.quiet_threads()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
