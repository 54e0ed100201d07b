"""The learned policy's network and what it reads and outputs (issue 15).

It reads what the engine has after a box: the image, the tool's current mask and probability, and the clicks
since the newest box, all resampled to a ``GRID`` x ``GRID`` grid (``features``; no image embedding, so it
works with any tool). It outputs two maps over the grid -- where the mask misses the target (a positive
click there) and where it takes in too much (a negative click) -- and a stop logit. The action distribution
is one softmax over [positive cells, negative cells, stop] (``action_logits``): SFT trains it towards the
expert's next action plus the error maps, RL samples from it; the shipped policy takes its argmax.

Why a grid and a small U-Net: 32 x 32 keeps a forward pass at a few milliseconds on one CPU thread and a
training run in minutes; the click itself is placed at full resolution inside the chosen cell
(``click_in_cell``), on the right side of the mask, as far from the mask's edge as the cell allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..actions import Action, Box, Point

GRID = 32
CHANNELS = 6  # image, mask, probability, positive clicks, negative clicks, newest box
CLICK_SIGMA = 1.0  # cells


def _resample(array: np.ndarray, size: int = GRID) -> np.ndarray:
    """HxW float -> size x size by area averaging (anisotropic for non-square images)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")[0, 0].numpy()


def prompts_since_box(actions: Sequence[Action]) -> tuple[Optional[Box], list[Point]]:
    """The newest box and the clicks after it: what a box-first tool's mask depends on."""
    box_index = max((i for i, a in enumerate(actions) if isinstance(a, Box)), default=None)
    start = 0 if box_index is None else box_index + 1
    box = None if box_index is None else actions[box_index]
    return box, [a for a in actions[start:] if isinstance(a, Point)]


def features(image: np.ndarray, mask: np.ndarray, probability: Optional[np.ndarray],
             actions: Sequence[Action], size: int = GRID) -> np.ndarray:
    """``CHANNELS`` x size x size float32 maps of the engine's state (see the module docstring)."""
    h, w = mask.shape
    grey = image.astype(np.float32).mean(axis=2) / 255.0
    grey = (grey - grey.mean()) / (grey.std() + 1e-6)
    prob = mask.astype(np.float32) if probability is None else np.asarray(probability, np.float32)
    out = np.zeros((CHANNELS, size, size), np.float32)
    out[0] = _resample(grey, size)
    out[1] = _resample(mask.astype(np.float32), size)
    out[2] = _resample(prob, size)
    box, clicks = prompts_since_box(actions)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for click in clicks:
        cy, cx = (click.y + 0.5) * size / h - 0.5, (click.x + 0.5) * size / w - 0.5
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * CLICK_SIGMA ** 2))
        channel = 3 if click.positive else 4
        out[channel] = np.maximum(out[channel], blob)
    if box is not None:
        y1, y2 = int(box.y1 * size / h), int(np.ceil((box.y2 + 1) * size / h))
        x1, x2 = int(box.x1 * size / w), int(np.ceil((box.x2 + 1) * size / w))
        out[5, y1:y2, x1:x2] = 1.0
    return out


def error_targets(mask: np.ndarray, ground_truth: np.ndarray, size: int = GRID) -> np.ndarray:
    """2 x size x size: the fraction of each cell the mask misses (FN) and takes in wrongly (FP)."""
    gt, pred = np.asarray(ground_truth, bool), np.asarray(mask, bool)
    return np.stack([_resample((gt & ~pred).astype(np.float32), size),
                     _resample((pred & ~gt).astype(np.float32), size)])


def cell_of(x: float, y: float, shape: tuple[int, int], size: int = GRID) -> tuple[int, int]:
    h, w = shape
    return min(size - 1, int(y * size / h)), min(size - 1, int(x * size / w))


def valid_cells(feature: np.ndarray, tried: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """2 x size x size bool: a positive click needs some pixel outside the mask in its cell, a negative one
    some pixel inside; cells already clicked are left out."""
    coverage = feature[1]
    valid = np.stack([coverage < 0.999, coverage > 0.001])
    for i, j in tried:
        valid[:, i, j] = False
    return valid


def action_logits(maps: torch.Tensor, stop: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Flat logits over [positive cells, negative cells, stop] (invalid cells at -inf): one distribution."""
    flat = maps.flatten(start_dim=-3).masked_fill(~valid.flatten(start_dim=-3), float("-inf"))
    return torch.cat([flat, stop.reshape(*flat.shape[:-1], 1)], dim=-1)


def flat_index(action: Action, shape: tuple[int, int], size: int = GRID) -> int:
    """The index of an expert action in ``action_logits``' flat layout (stop is the last)."""
    if isinstance(action, Point):
        i, j = cell_of(action.x, action.y, shape, size)
        return (0 if action.positive else size * size) + i * size + j
    return 2 * size * size


def click_in_cell(index: int, mask: np.ndarray, size: int = GRID) -> Point:
    """The full-resolution click of a flat index: in its cell, on the side the sign needs (outside the mask for
    a positive click, inside for a negative one), at the pixel farthest from the mask's edge."""
    positive = index < size * size
    i, j = divmod(index % (size * size), size)
    h, w = mask.shape
    y1, y2 = int(i * h / size), max(int(i * h / size) + 1, int((i + 1) * h / size))
    x1, x2 = int(j * w / size), max(int(j * w / size) + 1, int((j + 1) * w / size))
    side = ~mask if positive else mask
    pad = 8  # the distance is measured on a window around the cell, so the edge outside it counts
    wy1, wy2, wx1, wx2 = max(0, y1 - pad), min(h, y2 + pad), max(0, x1 - pad), min(w, x2 + pad)
    dist = ndimage.distance_transform_edt(side[wy1:wy2, wx1:wx2])
    cell = dist[y1 - wy1:y2 - wy1, x1 - wx1:x2 - wx1]
    if cell.max() <= 0:  # no pixel of the right side in the cell: its centre (the reviewer will say)
        return Point((x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2, positive)
    cy, cx = np.unravel_index(int(np.argmax(cell)), cell.shape)
    return Point(int(x1 + cx), int(y1 + cy), positive)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


@dataclass(frozen=True)
class NetConfig:
    width: int = 12
    grid: int = GRID
    channels: int = CHANNELS


class PolicyNet(nn.Module):
    """A 4-level U-Net: features -> (2 error-map logits, stop logit)."""

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        c, self.config = config.width, config
        self.e1, self.e2 = _block(config.channels, c), _block(c, 2 * c)
        self.e3, self.e4 = _block(2 * c, 4 * c), _block(4 * c, 4 * c)
        self.d3, self.d2, self.d1 = _block(8 * c, 2 * c), _block(4 * c, c), _block(2 * c, c)
        self.head = nn.Conv2d(c, 2, 1)
        self.stop = nn.Sequential(nn.Linear(8 * c + 2, 32), nn.ReLU(inplace=True), nn.Linear(32, 1))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        e3 = self.e3(self.pool(e2))
        e4 = self.e4(self.pool(e3))
        d3 = self.d3(torch.cat([self.up(e4), e3], 1))
        d2 = self.d2(torch.cat([self.up(d3), e2], 1))
        d1 = self.d1(torch.cat([self.up(d2), e1], 1))
        pooled = torch.cat([e4.mean((2, 3)), e4.amax((2, 3)), x[:, 1].mean((1, 2))[:, None],
                            (x[:, 3] + x[:, 4]).amax((1, 2))[:, None]], 1)
        return self.head(d1), self.stop(pooled)[:, 0]
