"""Pictures for people: the image with the mask and the step's markers (never the model's input; the
policy's observation image is built by the MLLM prompt module)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from . import colors
from .actions import Action, Box, Point


def overlay(
    image: np.ndarray,
    mask: Optional[np.ndarray] = None,
    applied: Iterable[Action] = (),
    proposal: Optional[Action] = None,
    scale: int = 2,
) -> Image.Image:
    """RGB picture: the mask tinted with its outline, applied boxes/clicks, and the proposal (amber)."""
    rgb = image.astype(np.float32).copy()
    if mask is not None and mask.any():
        tint = np.array(colors.MASK, np.float32)
        rgb[mask] = 0.65 * rgb[mask] + 0.35 * tint
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = tint
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    for action in applied:
        _draw(draw, action, scale, None)
    if proposal is not None:
        _draw(draw, proposal, scale, colors.PROPOSAL)
    return picture


def _draw(draw: ImageDraw.ImageDraw, action: Action, scale: int, colour) -> None:
    def at(v: float) -> float:
        return (v + 0.5) * scale

    if isinstance(action, Box):
        draw.rectangle([at(action.x1), at(action.y1), at(action.x2), at(action.y2)],
                       outline=colour or colors.BOX, width=2)
    elif isinstance(action, Point):
        r = 3 * scale
        x, y = at(action.x), at(action.y)
        fill = colors.POSITIVE if action.positive else colors.NEGATIVE
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=colour or (255, 255, 255), width=2)


def save_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """A mask as a 0/255 greyscale PNG."""
    Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).save(path)
