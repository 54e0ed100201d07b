"""Zoom (tools/zoom.py): a small structure's box also segmented on a crop, kept when it fits the box better."""

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box, Point
from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.tools.base import ToolError
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM
from MedSAMAgentLib.tools.zoom import Window, box_fit, zoom_window

SMALL_CASE = "sam-med2d/amos_0006_90_spleen_000"  # a spleen 60 px across on a 512 px CT slice


def test_window_is_a_square_around_the_box_kept_inside_the_image():
    window = zoom_window(Box(100, 100, 139, 119), (512, 400), factor=1.5)  # 40 x 20: side 1.5 x 40
    assert (window.width, window.height) == (60, 60)
    assert window.contains(100, 100) and window.contains(139, 119)
    assert abs((window.x0 + 30) - 119.5) <= 1 and abs((window.y0 + 30) - 109.5) <= 1
    corner = zoom_window(Box(0, 0, 9, 9), (200, 300))  # 20 px, raised to the 32 px minimum, at the corner
    assert (corner.x0, corner.y0, corner.width, corner.height) == (0, 0, 32, 32)
    edge = zoom_window(Box(280, 190, 299, 199), (200, 300))
    assert edge.x0 + edge.width == 300 and edge.y0 + edge.height == 200
    assert zoom_window(Box(0, 0, 149, 100), (256, 256)) is None  # 300 px crop: no smaller than the image


def test_window_moves_prompts_and_pastes_back():
    window = Window(10, 20, 30, 40)
    assert window.into(Box(15, 25, 35, 55)) == Box(5, 5, 25, 35)
    assert window.into(Point(12, 21, False)) == Point(2, 1, False)
    part = np.ones((40, 30), bool)
    full = window.paste(part, (100, 80), False)
    assert full.sum() == 1200 and full[20:60, 10:40].all() and np.array_equal(window.crop(full), part)


def test_box_fit_is_the_iou_of_the_masks_bounding_box_with_the_prompt():
    mask = np.zeros((50, 50), bool)
    assert box_fit(mask, Box(0, 0, 9, 9)) == 0.0
    mask[10:20, 10:20] = True
    assert box_fit(mask, Box(10, 10, 19, 19)) == pytest.approx(1.0)
    assert box_fit(mask, Box(10, 10, 29, 19)) == pytest.approx(0.5)  # the mask spans half of the box


@pytest.fixture(scope="module")
def tools():
    return LiteMedSAM(device="cpu", zoom="off"), LiteMedSAM(device="cpu")


def test_a_small_structure_is_segmented_on_the_crop_and_fits_its_box_better(tools, bundled):
    off, auto = tools
    case = bundled[SMALL_CASE]
    box = gt_box(case.ground_truth)
    off.set_image(case.image)
    auto.set_image(case.image)
    before = auto.encode_count
    plain, zoomed = off.predict([box], None), auto.predict([box], None)
    assert auto.encode_count == before + 1  # the crop's embedding, once
    window = zoom_window(box, case.image.shape[:2])
    assert zoomed.mask.shape == case.ground_truth.shape
    assert window.crop(zoomed.mask).sum() == zoomed.mask.sum() > 0  # all of the mask lies in the crop
    assert box_fit(zoomed.mask, box) > box_fit(plain.mask, box)
    assert dice(zoomed.mask, case.ground_truth) > dice(plain.mask, case.ground_truth) + 0.1
    # the choice is made once per image and box: the same box again, or clicks inside the crop, encode nothing
    auto.set_image(case.image)
    again = auto.predict([box], None)
    click = corrective_click(again.mask, case.ground_truth)
    assert window.contains(click.x, click.y)
    clicked = auto.predict([box, click], again)
    assert auto.encode_count == before + 1 and np.array_equal(again.mask, zoomed.mask)
    assert dice(clicked.mask, case.ground_truth) >= dice(zoomed.mask, case.ground_truth) - 0.01


def test_a_click_outside_the_crop_goes_back_to_the_whole_image(tools, bundled):
    off, auto = tools
    case = bundled[SMALL_CASE]
    box = gt_box(case.ground_truth)
    outside = Point(2.0, 2.0, True)  # far from the spleen: not inside any crop around its box
    auto.set_image(case.image)
    off.set_image(case.image)
    assert np.array_equal(auto.predict([box, outside], None).mask, off.predict([box, outside], None).mask)


def test_a_structure_the_whole_view_segments_well_keeps_its_mask(tools, bundled):
    off, auto = tools
    case = bundled["sam-med2d/amos_0006_90_liver_000"]
    box = gt_box(case.ground_truth)
    auto.set_image(case.image)
    off.set_image(case.image)
    before = auto.encode_count
    assert zoom_window(box, case.image.shape[:2]) is not None  # a crop is tried ...
    assert np.array_equal(auto.predict([box], None).mask, off.predict([box], None).mask)
    assert auto.encode_count == before + 1  # ... once, and the whole view's mask kept


def test_zoom_option_is_checked_and_named_in_the_version():
    with pytest.raises(ToolError, match="zoom option"):
        LiteMedSAM(device="cpu", zoom="sometimes")
    assert LiteMedSAM(device="cpu").version.endswith("+zoom")
    assert "zoom" not in LiteMedSAM(device="cpu", zoom="off").version


def test_the_agents_boxes_stay_on_the_whole_view_and_the_clinicians_are_zoomed(tools, bundled):
    """The box-fit test assumes a person's tight box: an accepted proposal's box is never zoomed, an override's
    is, and the clicks after each follow their box."""
    from MedSAMAgentLib.policies.oracle import OracleExpert
    from MedSAMAgentLib.session import Session

    off, _ = tools
    auto = LiteMedSAM(device="cpu")  # no choices made yet on this image
    case = bundled[SMALL_CASE]
    box = gt_box(case.ground_truth)
    off.set_image(case.image)
    plain = off.predict([box], None).mask

    agent = Session(auto, OracleExpert(case.ground_truth, jitter=0.0), case.image, save_image=False)
    assert agent.propose().action == box  # the oracle's unjittered box, proposed by the agent
    agent.accept()
    assert np.array_equal(agent.mask, plain)
    click = corrective_click(agent.mask, case.ground_truth)
    agent.place(click)
    off.set_image(case.image)
    assert np.array_equal(agent.mask, off.predict([box, click], None).mask)

    redrawn = Box(box.x1 - 1, box.y1, box.x2, box.y2)  # the clinician's own box over the same spleen
    clinician = Session(auto, OracleExpert(case.ground_truth, jitter=0.0), case.image, save_image=False)
    clinician.propose()
    clinician.override(redrawn)
    off.set_image(case.image)
    assert dice(clinician.mask, case.ground_truth) > dice(off.predict([redrawn], None).mask, case.ground_truth) + 0.1


def test_the_selection_benchmark_runs_leave_datasets_out_on_the_bundled_rows(capsys):
    import importlib.util
    import re
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "choose_zoom.py"
    spec = importlib.util.spec_from_file_location("choose_zoom", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    manifest = Path(__file__).resolve().parents[2] / "MedSAMAgentLib" / "data" / "manifest.jsonl"
    assert bench.main(["--manifest", str(manifest), "--limit", "7", "--jitter", "0", "0.1"]) == 0
    out = capsys.readouterr().out
    held = [line for line in out.splitlines() if "held out" in line and line.startswith(("medscribble", "sam"))]
    assert len(held) == 5  # every group of the 7 rows held out once
    for overall in out.splitlines()[-2:]:  # the ground-truth box, then the jittered one
        off, chosen = (float(v) for v in re.findall(r"\d\.\d{4}", overall))
        assert 0.0 < off <= 1.0 and 0.0 < chosen <= 1.0


def test_a_crops_prediction_pastes_back_whole_with_its_flags():
    from MedSAMAgentLib.tools.base import Prediction

    window = Window(5, 10, 20, 30)
    part = Prediction(mask=np.ones((30, 20), bool), logits=np.zeros((1, 256, 256), np.float32), score=0.7,
                      probability=np.full((30, 20), 0.9, np.float32), repaired_click=True)
    whole = window.paste_prediction(part, (64, 48))
    assert whole.mask.shape == whole.probability.shape == (64, 48) and whole.mask.sum() == 600
    assert whole.probability[10:40, 5:25].min() == pytest.approx(0.9) and whole.probability.sum() == pytest.approx(540)
    assert whole.score == 0.7 and whole.repaired_click and whole.logits is part.logits
