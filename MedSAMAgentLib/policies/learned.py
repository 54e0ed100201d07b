"""The learned policy: a small network trained on expert trajectories (SFT) and then with the project's
reward (RL), small enough to train and run on a laptop's CPU (issue 15; ``learning/policy_*.py``).

It starts from the clinician's hint. From a click it proposes the built-in policy's box (the box the tool is
most confident about around the click); from a box, or once a box is in place, the network reads the image,
the tool's mask and probability and the clicks since the box (``learning.policy_net.features``) and proposes
the most likely action of its distribution: a positive click where it sees the mask missing the target, a
negative one where the mask takes in too much, or stop. Each proposal says why in a line a clinician can
check ("missed region, 340 px, left border"). Cells already clicked or proposed in the episode are not
proposed again (an overridden proposal would otherwise come back unchanged).

Weights ship in ``data/learned_policy/`` and are checked by SHA-256 before use (``WEIGHTS_SHA256``); another
file (``weights=``, e.g. a leave-out fold's) is loaded safely but not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from ..actions import Box, Point, Stop
from ..tools.base import probability
from .base import Observation, PolicyError, Proposal

WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "learned_policy" / "learned_policy.pt"
WEIGHTS_SHA256 = "c00e7a7e997a93194319859e6b53cdf63417332005ec6b7e68b32ff1f71d0201"  # of the shipped file


class LearnedPolicy:
    name = "learned"
    needs_hint = True  # it does not find the target on its own yet: the clinician's click or box starts it

    def __init__(self, weights: Optional[str | Path] = None, expected_sha256: Optional[str] = None):
        import torch

        from ..learning.policy_training import load_weights
        from ..tools.litemedsam import file_sha256

        path = Path(weights) if weights else WEIGHTS
        if not path.is_file():
            raise PolicyError(f"the learned policy's weights are missing: {path}")
        sha = file_sha256(path)
        wanted = expected_sha256 if expected_sha256 is not None else (None if weights else WEIGHTS_SHA256)
        if wanted is not None and sha != wanted:
            raise PolicyError(f"the learned policy's weights at {path} fail their SHA-256 check "
                              f"(got {sha[:12]}, expected {wanted[:12] or 'a shipped file'}); reinstall the package")
        try:
            self.net, self.meta = load_weights(path)
        except ValueError as error:
            raise PolicyError(str(error)) from None
        self._torch = torch
        self.weights, self.sha256 = path, sha
        self.version = f"1:{sha[:12]}"
        from .builtin import BuiltinPolicy

        self._boxer = BuiltinPolicy()
        self._proposed: list[tuple[int, int]] = []  # cells proposed this episode (an overridden one too)

    def reset(self) -> None:
        self._boxer.reset()
        self._proposed = []

    def propose(self, observation: Observation) -> Proposal:
        from ..learning.policy_net import (GRID, action_logits, cell_of, click_in_cell, features,
                                           prompts_since_box, valid_cells)

        prediction = observation.prediction
        if prediction is None or not observation.actions:
            raise PolicyError("the learned policy starts from your hint: place one click or one box first")
        if len(observation.actions) >= observation.max_actions:
            return Proposal(Stop(), "action limit reached", self.name)
        if not any(isinstance(a, Box) for a in observation.actions):
            box = self._boxer.box_from_click(observation)
            if box is not None:
                return Proposal(box, "box around the structure under your click", self.name)
        mask = prediction.mask
        feature = features(observation.image, mask, prediction.probability, observation.actions)
        tried = [cell_of(a.x, a.y, mask.shape) for a in observation.actions if isinstance(a, Point)] + self._proposed
        torch = self._torch
        with torch.inference_mode():
            maps, stop = self.net(torch.from_numpy(feature)[None])
            logits = action_logits(maps[0], stop[0], torch.from_numpy(valid_cells(feature, tried)))
            probabilities = torch.softmax(logits, -1).numpy()
            error = torch.sigmoid(maps[0]).numpy()
        index = int(np.argmax(probabilities))
        if index == 2 * GRID * GRID:
            done = float(probability(float(stop[0])))
            return Proposal(Stop(), f"the mask looks complete (stop {probabilities[index]:.2f}, "
                                    f"IoU >= 0.9 likely {done:.2f})", self.name)
        click = click_in_cell(index, mask)
        self._proposed.append(divmod(index % (GRID * GRID), GRID))
        return Proposal(click, describe_click(click, mask, error, index, GRID), self.name)


def describe_click(click: Point, mask: np.ndarray, error: np.ndarray, index: int, grid: int) -> str:
    """"missed region, 340 px, left border": what the network sees there, its size (the predicted error region
    around the cell, in image pixels) and where it lies relative to the current mask."""
    channel = 0 if click.positive else 1
    i, j = divmod(index % (grid * grid), grid)
    region, _ = ndimage.label(error[channel] > 0.5)
    h, w = mask.shape
    cells = int((region == region[i, j]).sum()) if region[i, j] else 1
    pixels = int(round(cells * h * w / grid ** 2))
    what = "missed region" if click.positive else "false region"
    if not mask.any():
        return f"{what}, {pixels} px"
    ys, xs = np.nonzero(mask)
    dx, dy = click.x - xs.mean(), click.y - ys.mean()
    side = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("bottom" if dy > 0 else "top")
    edge = ndimage.distance_transform_edt(mask if not click.positive else ~mask)[int(click.y), int(click.x)]
    near = edge <= max(3.0, 0.15 * np.sqrt(mask.sum()))
    where = f"{side} border" if near else f"{side}, {'outside' if click.positive else 'inside'} the mask"
    return f"{what}, {pixels} px, {where}"
