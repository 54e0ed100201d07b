"""Click refinement for box-trained tools (LiteMedSAM).

Baseline: decode again with the box and all clicks since it. (Issue 3 replaces this with a method chosen by
measurement.)
"""

from __future__ import annotations

import numpy as np

from .actions import Point
from .tools.base import Prediction


def refine_with_clicks(tool, base: Prediction, clicks: list[Point]) -> Prediction:
    """Interim: decode with the newest box and every click since it."""
    box = tool.last_box
    points = np.array([[c.x, c.y] for c in clicks], np.float32)
    labels = np.array([int(c.positive) for c in clicks])
    logits, scores = tool.decode(box=box, points=points, labels=labels)
    full = tool.upsample(logits[0])
    return Prediction(full > 0, logits[:1].astype(np.float32), float(np.clip(scores[0], 0, 1)),
                      probability=1 / (1 + np.exp(-full)))
