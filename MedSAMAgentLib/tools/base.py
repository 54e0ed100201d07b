"""The segmentation-tool interface, in the spirit of segment-anything's ``SamPredictor``.

``set_image`` once per 2D image (the embedding is cached under the image's key), then ``predict`` from the
episode's actions and the previous prediction. Each tool decides how to turn that history into prompts:
tools trained with clicks follow the protocol's update rule (``protocol_prompts``); the built-in
LiteMedSAM, trained with boxes only, refines clicks its own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..actions import Action, Box, Point


class ToolError(RuntimeError):
    """A tool could not be built or run; the message names the file or input at fault."""


def probability(logits):
    """Foreground probability of mask logits: the logistic function, clipped so that very confident pixels
    raise no overflow warning."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))


@dataclass
class Prediction:
    """One tool output at the image's own resolution.

    ``logits`` are the low-resolution mask logits (1 x 256 x 256 for the SAM family at 1024 input; 1 x 128 x
    128 for SAM2 at 512) that the next step passes back as the mask input; ``score`` is the tool's confidence
    in [0, 1] (predicted IoU where the model has one);
    ``candidates`` are the other multimask outputs (bool, image resolution), for policies that read them.
    """

    mask: np.ndarray
    logits: np.ndarray
    score: float
    candidates: list[np.ndarray] = field(default_factory=list)
    probability: Optional[np.ndarray] = None  # per-pixel foreground probability, where the tool has one
    repaired_click: bool = False  # the tool missed a positive click's pixel and tools/guard.py added it


@runtime_checkable
class SegmentationTool(Protocol):
    name: str
    version: str
    trained_with_clicks: bool

    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        """Take an HxWx3 uint8 image; compute (or reuse, by ``key``) its embedding."""

    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        """Mask after ``actions`` (all box/point actions of the episode so far, newest last)."""


@dataclass(frozen=True)
class Prompts:
    """What one decoder call receives: points (pixel x, y), their labels (1/0), a box, and the mask input."""

    points: Optional[np.ndarray]  # (N, 2) float, pixel coordinates
    labels: Optional[np.ndarray]  # (N,) int, 1 positive / 0 negative
    box: Optional[np.ndarray]  # (4,) float, pixel coordinates
    mask_input: Optional[np.ndarray]  # (1, 256, 256) low-res logits of the previous step


def protocol_prompts(actions: Sequence[Action], previous: Optional[Prediction]) -> Prompts:
    """The MedSAM-Agent tool update rule (AGENT_PROTOCOL.md, "Segmentation tool update rule").

    Each action sends only the newest prompt plus the previous step's low-resolution logits; a click before
    any mask exists sends all clicks so far and the box, if any.
    """
    prompts = [a for a in actions if isinstance(a, (Box, Point))]
    if not prompts:
        raise ToolError("predict needs at least one box or point")
    newest = prompts[-1]
    if previous is None and isinstance(newest, Point):
        since_box = prompts
        boxes = [a for a in prompts if isinstance(a, Box)]
        if boxes:
            last_box_index = max(i for i, a in enumerate(prompts) if isinstance(a, Box))
            since_box = prompts[last_box_index + 1 :]
        points = [a for a in since_box if isinstance(a, Point)]
        return Prompts(
            points=np.array([[p.x, p.y] for p in points], dtype=np.float32),
            labels=np.array([int(p.positive) for p in points], dtype=np.int64),
            box=np.array(boxes[-1].as_list(), dtype=np.float32) if boxes else None,
            mask_input=None,
        )
    mask_input = None if previous is None else previous.logits
    if isinstance(newest, Box):
        return Prompts(None, None, np.array(newest.as_list(), dtype=np.float32), mask_input)
    return Prompts(
        np.array([[newest.x, newest.y]], dtype=np.float32),
        np.array([int(newest.positive)], dtype=np.int64),
        None,
        mask_input,
    )
