"""Click refinement for LiteMedSAM (refinement.py): each correct click counts, in the right direction.

Real images: the bundled cases through the real built-in tool, plus one synthetic picture for the method's
geometry alone (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from MedSAMAgentLib.actions import Box, Point
from MedSAMAgentLib.metrics import iou
from MedSAMAgentLib.policies.oracle import corrective_click, gt_box
from MedSAMAgentLib.refinement import ClickRefiner, RefinementSettings, apply_click, image_features


def _square_picture():
    """A bright 40x40 square on a dark background, and a prior that covers only its left 24 columns."""
    image = np.full((96, 96, 3), 40, np.uint8)
    image[28:68, 28:68] = 200
    truth = np.zeros((96, 96), bool)
    truth[28:68, 28:68] = True
    logits = np.full((96, 96), -8.0, np.float32)
    logits[28:68, 28:52] = 8.0
    logits[28:68, 52:68] = -3.0  # the model's missed part, unsure as LiteMedSAM's usually is
    return image, truth, logits


def test_positive_click_adds_the_missed_part_and_stops_at_the_edge():
    image, truth, logits = _square_picture()
    box = gt_box(truth)
    field = apply_click(logits, Point(60, 48, True), image_features(image, box))
    before, after = logits > 0, field > 0
    assert after[48, 60]
    assert np.all(after[before])  # a positive click only adds
    assert after[truth].mean() > 0.85  # most of the missed right part of the square is in
    assert after[~truth].sum() < 0.01 * truth.sum()  # the dark background is not
    assert iou(after, truth) > 0.85 > 0.6 >= iou(before, truth)


def test_negative_click_removes_its_region_only():
    image, truth, _ = _square_picture()
    logits = np.where(truth, 8.0, -8.0).astype(np.float32)
    logits[20:28, 36:60] = 2.0  # a false strip above the square
    box = Box(28, 20, 67, 67)
    field = apply_click(logits, Point(48, 24, False), image_features(image, box))
    before, after = logits > 0, field > 0
    assert not after[24, 48]
    assert not np.any(after & ~before)  # a negative click only removes
    # the false strip is gone, but for its row touching the square, whose blurred intensity is half the
    # square's: unlike the clicked background, it is left to the next click
    assert after[20:27, 36:60].mean() < 0.1
    assert after[truth].all()  # the square is untouched


def test_refiner_result_depends_only_on_the_clicks():
    image, truth, logits = _square_picture()
    clicks = [Point(60, 48, True), Point(64, 30, False)]
    chained = ClickRefiner()
    chained.refine(image, logits, gt_box(truth), clicks[:1], key="k")
    a = chained.refine(image, logits, gt_box(truth), clicks, key="k")
    b = ClickRefiner().refine(image, logits, gt_box(truth), clicks)  # no cache at all
    np.testing.assert_array_equal(a, b)


def test_settings_live_in_one_dataclass():
    settings = RefinementSettings()
    assert settings.margin > 0 and settings.reach > 0
    with pytest.raises(Exception):
        settings.margin = 2.0  # frozen: change it by making new settings


def _oracle_run(tool, task, clicks: int):
    gt = task.ground_truth
    tool.set_image(task.image)
    actions = [gt_box(gt)]
    prediction = tool.predict(actions, None)
    history = [(None, prediction)]
    for _ in range(clicks):
        click = corrective_click(prediction.mask, gt)
        if click is None:
            break
        actions.append(click)
        previous = prediction
        prediction = tool.predict(actions, previous)
        history.append((click, prediction, previous))
    return history


@pytest.mark.parametrize("case_id", [
    "medscribble/HipXRay/image_054_axis0_midslice",
    "medscribble/SCD/p7_axis2_midslice",
    "sam-med2d/amos_0006_90_spleen_000",
    "medscribble/BTCV/0763890-Image_axis1_maxslice",
])
def test_every_oracle_click_lands_and_moves_the_mask_its_way(litemedsam, bundled, case_id):
    """On real cases: the clicked pixel ends on the clicked side; a positive click never removes pixels and a
    negative click never adds any; and five clicks do not leave the mask worse than the box."""
    task = bundled[case_id]
    history = _oracle_run(litemedsam, task, clicks=5)
    _assert_clicks_move_the_mask(history, task.ground_truth)


def _assert_clicks_move_the_mask(history, truth) -> None:
    """Each clicked pixel ends on its side; a positive click only adds pixels, a negative one only removes
    them; the last mask is no worse than the box's."""
    for click, prediction, previous in history[1:]:
        y, x = int(click.y), int(click.x)
        assert prediction.mask[y, x] == click.positive
        if click.positive:
            assert np.all(prediction.mask[previous.mask])
        else:
            assert not np.any(prediction.mask & ~previous.mask)
    assert iou(history[-1][1].mask, truth) >= iou(history[0][1].mask, truth)


def test_negative_click_empties_the_ring_cavity(litemedsam, bundled):
    """The myocardium (SCD) is a ring; the box fills the cavity. A negative click there removes most of it."""
    task = bundled["medscribble/SCD/p7_axis2_midslice"]
    history = _oracle_run(litemedsam, task, clicks=1)
    (_, box), (click, after, _) = history[0], history[1]
    assert not click.positive
    false = box.mask & ~task.ground_truth
    labels, _ = ndimage.label(false)
    region = labels == labels[int(click.y), int(click.x)]
    assert after.mask[region].mean() < 0.5
    assert iou(after.mask, task.ground_truth) > iou(box.mask, task.ground_truth)


def test_clicks_improve_an_organ_and_the_box_is_decoded_once(litemedsam, bundled):
    task = bundled["medscribble/HipXRay/image_054_axis0_midslice"]
    history = _oracle_run(litemedsam, task, clicks=3)
    ious = [iou(h[1].mask, task.ground_truth) for h in history]
    assert ious[-1] > ious[0] + 0.03
    # the same actions give the same mask, from the cache or not
    actions = [gt_box(task.ground_truth)] + [h[0] for h in history[1:]]
    again = litemedsam.predict(actions, None)
    np.testing.assert_array_equal(again.mask, history[-1][1].mask)
    assert again.probability is not None and again.probability.shape == task.ground_truth.shape


def test_capped_geodesic_is_exact_at_step_one_and_close_when_coarse():
    from MedSAMAgentLib.refinement import capped_geodesic, geodesic_distance

    cost = np.ones((97, 130), np.float32)
    cost[:, 60:63] = 50.0  # a wall: the far side is reached only at a high cost
    exact = geodesic_distance(cost, [(40, 20)])
    np.testing.assert_array_equal(capped_geodesic(cost, [(40, 20)], 1), exact)
    coarse = capped_geodesic(cost, [(40, 20)], 4)
    assert coarse.shape == exact.shape
    near = exact < 35  # the click's own side: the coarse grid's distances stay within a few pixels
    assert np.abs(coarse[near] - exact[near]).max() < 8
    assert coarse[:, 70:].min() > 60  # the wall still stops it


def test_capped_refinement_keeps_the_click_invariants_on_a_1024_image(litemedsam, bundled):
    """At 1024 px the geodesic runs on a 2x coarser grid: clicks still land and move the mask their way."""
    from PIL import Image

    from MedSAMAgentLib.manifest import LoadedCase

    case = bundled["medscribble/HipXRay/image_054_axis0_midslice"]
    h, w = case.image.shape[:2]
    size = (w * 1024 // max(h, w), h * 1024 // max(h, w))
    image = np.asarray(Image.fromarray(case.image).resize(size, Image.BILINEAR))
    truth = np.asarray(Image.fromarray(case.ground_truth.astype(np.uint8)).resize(size, Image.NEAREST)) > 0
    task = LoadedCase(case.case, image, truth)
    history = _oracle_run(litemedsam, task, clicks=4)
    assert len(history) > 2
    _assert_clicks_move_the_mask(history, truth)
