"""The built-in tool with its real weights on the bundled real cases."""

import numpy as np
import pytest
import torch

from MedSAMAgentLib.actions import Box
from MedSAMAgentLib.metrics import dice
from MedSAMAgentLib.policies.oracle import gt_box
from MedSAMAgentLib.tools.base import ToolError
from MedSAMAgentLib.tools.litemedsam import LiteMedSAM
from MedSAMAgentLib.tools.zoom import zoom_window

from conftest import BOX_CASES, NON_SQUARE_CASE


@pytest.mark.parametrize("case_id", BOX_CASES)
def test_ground_truth_box_gives_dice_above_0_9(litemedsam, bundled, case_id):
    case = bundled[case_id]
    litemedsam.set_image(case.image)
    prediction = litemedsam.predict([gt_box(case.ground_truth)], None)
    assert prediction.mask.shape == case.ground_truth.shape and prediction.mask.dtype == bool
    assert prediction.logits.shape == (1, 256, 256)
    assert 0.0 <= prediction.score <= 1.0
    assert dice(prediction.mask, case.ground_truth) >= 0.9


def test_embedding_is_computed_once_per_image(litemedsam, bundled):
    case = bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    flipped = np.ascontiguousarray(case.image[:, ::-1])  # an image this tool has never seen
    box = gt_box(case.ground_truth)
    litemedsam.set_image(case.image)
    litemedsam.predict([box], None)  # this image's zoom choice (tools/zoom.py) made before counting
    before = litemedsam.encode_count
    crop = zoom_window(box, flipped.shape[:2]) is not None  # the flipped image's crop is tried once too
    for image in (case.image, flipped, case.image, flipped):
        litemedsam.set_image(image)
        litemedsam.predict([box], None)
    assert litemedsam.encode_count == before + 1 + crop  # only the flipped image was new


def test_non_square_image_mask_follows_the_box(litemedsam, bundled):
    case = bundled[NON_SQUARE_CASE]  # 181 x 258: the padding must not shift the mask
    litemedsam.set_image(case.image)
    box = gt_box(case.ground_truth)
    mask = litemedsam.predict([box], None).mask
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - np.nonzero(case.ground_truth)[1].mean()) < 2
    assert abs(ys.mean() - np.nonzero(case.ground_truth)[0].mean()) < 2


def test_upstream_preprocessing_not_stretch(litemedsam, bundled):
    """The same structure boxed in a padded copy of the image gives the same mask (longest-side resize)."""
    case = bundled["medscribble/BTCV/0763890-Image_axis1_maxslice"]
    litemedsam.set_image(case.image)
    box = gt_box(case.ground_truth)
    direct = litemedsam.predict([box], None).mask
    wide = np.zeros((256, 512, 3), np.uint8)
    wide[:, :256] = case.image
    litemedsam.set_image(wide)
    padded = litemedsam.predict([box], None).mask[:, :256]
    assert dice(direct, padded) > 0.85


def test_wrong_image_and_missing_or_bad_checkpoints_give_clear_errors(litemedsam, tmp_path):
    with pytest.raises(ToolError, match="HxWx3 uint8"):
        litemedsam.set_image(np.zeros((10, 10), np.float32))
    with pytest.raises(ToolError, match="not found"):
        LiteMedSAM(checkpoint=tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ToolError, match="cannot read"):
        LiteMedSAM(checkpoint=corrupt)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ToolError, match="not a LiteMedSAM checkpoint"):
        LiteMedSAM(checkpoint=other)
    with pytest.raises(ToolError, match="at least one box"):
        litemedsam.predict([], None)
