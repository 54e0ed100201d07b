"""Pixel <-> protocol coordinates: the one place where the model image's letterbox is defined.

The policy sees the 2D image letterboxed to a square (aspect kept, centred padding) and speaks integer
coordinates in 0..999 of that square. ``Letterbox`` maps both ways; unlike the MedSAM-Agent release it
undoes the padding, so non-square images map correctly (AGENT_PROTOCOL.md, "Action space").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .actions import Action, Box, Point, Stop

MODEL_SCALE = 1000  # protocol coordinates are integers in 0..MODEL_SCALE-1
MODEL_IMAGE_SIZE = 512  # side of the letterboxed RGB image the policy sees


@dataclass(frozen=True)
class Letterbox:
    """The square frame of side ``max(height, width)`` with the image centred in it."""

    height: int
    width: int

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def pad_x(self) -> int:
        return (self.side - self.width) // 2

    @property
    def pad_y(self) -> int:
        return (self.side - self.height) // 2

    # -- coordinates -------------------------------------------------------------------------------------
    def to_model(self, x: float, y: float) -> tuple[int, int]:
        """Image pixel -> protocol integer coordinates (0..999)."""
        vx = round((x + self.pad_x) / self.side * MODEL_SCALE)
        vy = round((y + self.pad_y) / self.side * MODEL_SCALE)
        return int(np.clip(vx, 0, MODEL_SCALE - 1)), int(np.clip(vy, 0, MODEL_SCALE - 1))

    def from_model(self, vx: float, vy: float) -> tuple[float, float]:
        """Protocol coordinates -> image pixel (``pixel = v / 1000 * side`` minus padding), clamped to the image."""
        x = float(vx) / MODEL_SCALE * self.side - self.pad_x
        y = float(vy) / MODEL_SCALE * self.side - self.pad_y
        return float(np.clip(x, 0, self.width - 1)), float(np.clip(y, 0, self.height - 1))

    def action_to_model(self, action: Action) -> dict:
        """An action in protocol coordinates, as the JSON arguments of its tool call."""
        if isinstance(action, Box):
            x1, y1 = self.to_model(action.x1, action.y1)
            x2, y2 = self.to_model(action.x2, action.y2)
            return {"bbox_2d": [x1, y1, x2, y2]}
        if isinstance(action, Point):
            return {"point_2d": list(self.to_model(action.x, action.y)), "point_type": action.label}
        return {}

    def action_from_model(self, action: Action) -> Action:
        """Map an action whose coordinates are protocol values to image pixels (points land on a pixel)."""
        if isinstance(action, Box):
            x1, y1 = self.from_model(action.x1, action.y1)
            x2, y2 = self.from_model(action.x2, action.y2)
            return Box(round(x1), round(y1), round(x2), round(y2))
        if isinstance(action, Point):
            x, y = self.from_model(action.x, action.y)
            return Point(round(x), round(y), action.positive)
        return Stop()

    # -- images ------------------------------------------------------------------------------------------
    def apply(self, image: np.ndarray, size: int = MODEL_IMAGE_SIZE) -> np.ndarray:
        """Letterbox an HxW or HxWx3 uint8 image to ``size`` x ``size`` (black padding, bilinear resize)."""
        from PIL import Image

        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {image.shape[:2]}, letterbox was made for {(self.height, self.width)}")
        square = np.zeros((self.side, self.side) + image.shape[2:], dtype=np.uint8)
        square[self.pad_y : self.pad_y + self.height, self.pad_x : self.pad_x + self.width] = image
        if self.side == size:
            return square
        return np.asarray(Image.fromarray(square).resize((size, size), Image.BILINEAR))
