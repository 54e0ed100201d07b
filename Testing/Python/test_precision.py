"""LiteMedSAM's opt-in bf16 encoder (``precision=bf16``, tools/runtime.py): validated with a clear message,
cached apart from the f32 export, and segmenting real bundled images like f32 (issue 17's accuracy bar is
measured by Testing/benchmarks/bench_speed.py --bf16 on the shared set; here a smoke check of the path)."""

from __future__ import annotations

import pytest

from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.registry import make_tool
from MedSAMAgentLib.tools import runtime
from MedSAMAgentLib.tools.base import ToolError
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM


def cpu_has_bf16() -> bool:
    try:
        return "BF16" in runtime.import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except ImportError:
        return False


needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU (or OpenVINO) has no bf16 support")


def test_precision_option_is_validated():
    with pytest.raises(ToolError, match="precision must be one of f32, bf16"):
        LiteMedSAM(device="cpu", precision="fp8")
    with pytest.raises(ToolError, match="does not apply to runtime=torch"):
        LiteMedSAM(device="cpu", runtime="torch", precision="bf16")
    with pytest.raises(ToolError, match="does not apply to a GPU"):
        LiteMedSAM(device="cuda", precision="bf16")
    assert LiteMedSAM(device="cpu", precision="F32").precision == "f32"


def test_bf16_is_refused_on_a_cpu_without_it(monkeypatch):
    class Core:
        def get_property(self, device, name):
            return ["FP32", "INT8"]

    ov = runtime.import_openvino()
    monkeypatch.setattr(ov, "Core", Core)
    with pytest.raises(ToolError, match="needs a CPU with bf16 instructions"):
        LiteMedSAM(device="cpu", precision="bf16")


@needs_bf16
def test_bf16_tool_segments_like_f32(litemedsam, bundled):
    bf16 = make_tool("litemedsam", device="cpu", precision="bf16")
    assert bf16.version == litemedsam.version.replace("+zoom", "+bf16+zoom")
    case = bundled["sam-med2d/s0114_111_aorta_000"]
    masks = []
    for tool in (litemedsam, bf16):
        tool.set_image(case.image)
        masks.append(tool.predict([gt_box(case.ground_truth)], None).mask)
    assert bf16.backend == "openvino"
    assert bf16._encoder.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"
    assert litemedsam._encoder.folder != bf16._encoder.folder  # its own cache folder
    assert bf16._encoder.folder.name.startswith("litemedsam-encoder-bf16-")
    assert dice(masks[0], masks[1]) > 0.95
    click = corrective_click(masks[0], case.ground_truth)
    actions = [gt_box(case.ground_truth)] + ([click] if click is not None else [])
    after = [tool.predict(actions, None).mask for tool in (litemedsam, bf16)]
    assert abs(dice(after[0], case.ground_truth) - dice(after[1], case.ground_truth)) < 0.02
    # a second bf16 tool reads the checked bf16 export from the cache (no torch network built)
    again = LiteMedSAM(device="cpu", precision="bf16")
    assert again._net is None and again._encoder.folder == bf16._encoder.folder
