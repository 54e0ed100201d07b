"""Pixel <-> protocol 0..999 coordinates, and volume slices back to voxels."""

import numpy as np
import pytest

from MedSAMAgentLib.actions import Box, Point, Stop
from MedSAMAgentLib.geometry import Letterbox
from MedSAMAgentLib.images import take_slice


@pytest.mark.parametrize("shape", [(256, 256), (181, 258), (512, 300), (37, 999), (1000, 1000), (3, 2)])
def test_pixel_model_round_trip_within_one_pixel(shape):
    h, w = shape
    lb = Letterbox(h, w)
    ys, xs = np.meshgrid(np.linspace(0, h - 1, 17), np.linspace(0, w - 1, 17), indexing="ij")
    for x, y in zip(xs.ravel().round(), ys.ravel().round()):
        vx, vy = lb.to_model(x, y)
        assert 0 <= vx <= 999 and 0 <= vy <= 999
        bx, by = lb.from_model(vx, vy)
        assert abs(bx - x) <= 1 and abs(by - y) <= 1


def test_letterbox_centres_the_image_and_undoes_padding():
    lb = Letterbox(100, 200)  # wide image: 50 rows of padding above and below
    assert (lb.side, lb.pad_x, lb.pad_y) == (200, 0, 50)
    assert lb.to_model(0, 0) == (0, 250)  # the image's top row sits a quarter down the model image
    assert lb.to_model(199, 99) == (995, 745)
    # a model point in the padding maps to the nearest image row, never outside the image
    assert lb.from_model(500, 10) == (100.0, 0.0)
    assert lb.from_model(500, 990) == (100.0, 99.0)


def test_actions_map_to_model_and_back():
    lb = Letterbox(181, 258)
    box = Box(10, 20, 200, 170)
    back = lb.action_from_model(Box(*lb.action_to_model(box)["bbox_2d"]))
    assert np.allclose(back.as_list(), box.as_list(), atol=1)
    point = Point(257, 0, False)
    args = lb.action_to_model(point)
    assert args["point_type"] == "negative"
    back = lb.action_from_model(Point(*args["point_2d"], False))
    assert abs(back.x - 257) <= 1 and abs(back.y - 0) <= 1 and not back.positive
    assert lb.action_from_model(Stop()) == Stop()


def test_letterbox_image_is_square_and_keeps_aspect():
    image = np.full((100, 200, 3), 200, np.uint8)
    out = Letterbox(100, 200).apply(image)
    assert out.shape == (512, 512, 3)
    assert out[:120, 256].max() == 0 and out[256, 256].min() == 200 and out[-120:, 256].max() == 0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_pixels_map_back_to_voxels_on_every_axis(axis, rng):
    volume = rng.integers(0, 1000, size=(7, 11, 13))
    index = volume.shape[axis] // 2
    plane, mapping = take_slice(volume, axis, index)
    for _ in range(20):
        y, x = rng.integers(0, plane.shape[0]), rng.integers(0, plane.shape[1])
        voxel = mapping.to_voxel(x, y)
        assert voxel[axis] == index
        assert volume[voxel] == plane[y, x]
        assert mapping.to_pixel(voxel) == (x, y)
    # a slice pixel -> model space -> pixel -> voxel lands on the same voxel
    lb = Letterbox(*plane.shape)
    x, y = plane.shape[1] - 1, plane.shape[0] // 3
    bx, by = lb.from_model(*lb.to_model(x, y))
    assert mapping.to_voxel(round(bx), round(by)) == mapping.to_voxel(x, y)
