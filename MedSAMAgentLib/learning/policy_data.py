"""Training samples for the learned policy from expert trajectories (issue 15).

The expert is ``trajectories generate``'s (``trajectories.generate.run_episode``: the oracle's jittered
ground-truth box, then corrective clicks kept only when they raise IoU by ``tau``, stop at IoU 0.9), run on
the training cases of ``learning.embeddings`` (the 2D rows and slices of the 3D rows) with the tool the
evaluation uses. Every state after the box gives one sample: the policy's input maps (``policy_net.features``),
the error maps against the ground truth, whether IoU has reached the clinician's stop level, and the expert's
next action (a click, stop, or none where the episode hit its action limit). Augmentation (flips and
transposes of the grid, the same for input, targets and action) happens in training (``augment``).

Samples are saved once as one ``.npz`` (float16 maps) so every leave-out fold trains from the same file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..actions import Point, Stop
from ..metrics import iou
from ..reviewers import STOP_ACCEPT_IOU
from .policy_net import CHANNELS, GRID, cell_of, error_targets, features

NO_ACTION = -1  # the episode hit its limit: no expert action for that state
STOP_KIND = 2  # action kind: 0 positive click, 1 negative click, 2 stop


@dataclass
class PolicySamples:
    """Arrays over samples (first axis), with the case and group of each for leave-out folds."""

    x: np.ndarray  # N x CHANNELS x G x G float16
    errors: np.ndarray  # N x 2 x G x G float16 (FN, FP cell fractions)
    stop: np.ndarray  # N float32: 1 where IoU >= the clinician's stop level
    kind: np.ndarray  # N int8: 0 / 1 / 2 (stop) / NO_ACTION
    cell: np.ndarray  # N x 2 int16: (row, column) of the expert's click
    case: np.ndarray  # N str
    group: np.ndarray  # N str
    licence_ok: np.ndarray  # N bool: the row's licence allows shipping derived weights

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(temporary, **self.__dict__)
        temporary.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PolicySamples":
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def select(self, keep: np.ndarray) -> "PolicySamples":
        return PolicySamples(**{name: value[keep] for name, value in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.kind)


def episode_samples(session, ground_truth: np.ndarray) -> list[tuple]:
    """(x, errors, stop, kind, cell) for every state of a finished expert session after its first action."""
    rows = []
    applied = [s for s in session.steps if s.applied is not None]
    for index, step in enumerate(applied):
        if isinstance(step.applied, Stop) or step.prediction is None:
            continue
        actions = [s.applied for s in applied[: index + 1] if not isinstance(s.applied, Stop)]
        mask, prediction = step.prediction.mask, step.prediction
        nxt = applied[index + 1].applied if index + 1 < len(applied) else None
        kind, cell = NO_ACTION, (0, 0)
        if isinstance(nxt, Point):
            kind, cell = (0 if nxt.positive else 1), cell_of(nxt.x, nxt.y, mask.shape)
        elif isinstance(nxt, Stop):
            kind = STOP_KIND
        rows.append((features(session.image, mask, prediction.probability, actions),
                     error_targets(mask, ground_truth), float(iou(mask, ground_truth) >= STOP_ACCEPT_IOU),
                     kind, cell))
    return rows


def build_samples(cases: Sequence, tool, episodes: int = 1, seed: int = 0, progress: bool = True,
                  log=None) -> PolicySamples:
    """Expert episodes (``episodes`` seeds per case) on ``cases`` (``embeddings.TrainingCase``) -> samples."""
    from ..trajectories.generate import GenerateSettings, episode_seed, run_episode

    settings = GenerateSettings(seed=seed)
    columns: dict[str, list] = {k: [] for k in ("x", "errors", "stop", "kind", "cell", "case", "group", "licence_ok")}
    items = cases
    if progress:
        from tqdm import tqdm

        items = tqdm(cases, desc="expert episodes", unit="case", file=sys.stderr, dynamic_ncols=True)
    for case in items:
        for number in range(episodes):
            session = run_episode(tool, case.image, case.mask, "", "box-to-point",
                                  episode_seed(seed, case.id, "box-to-point", number), settings,
                                  image_key=case.key)
            for x, errors, stop, kind, cell in episode_samples(session, case.mask):
                for name, value in zip(("x", "errors", "stop", "kind", "cell"), (x, errors, stop, kind, cell)):
                    columns[name].append(value)
                columns["case"].append(case.id)
                columns["group"].append(case.group)
                columns["licence_ok"].append(case.derived_weights_ok)
        if log is not None:
            log(f"{case.id}: {sum(1 for c in columns['case'] if c == case.id)} samples")
    return PolicySamples(
        x=np.asarray(columns["x"], np.float16).reshape(-1, CHANNELS, GRID, GRID),
        errors=np.asarray(columns["errors"], np.float16).reshape(-1, 2, GRID, GRID),
        stop=np.asarray(columns["stop"], np.float32), kind=np.asarray(columns["kind"], np.int8),
        cell=np.asarray(columns["cell"], np.int16).reshape(-1, 2), case=np.asarray(columns["case"], str),
        group=np.asarray(columns["group"], str), licence_ok=np.asarray(columns["licence_ok"], bool))


def augment(x: np.ndarray, errors: np.ndarray, cell: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random flip/transpose of the grid for a batch: the same for input maps, error maps and clicks."""
    size = x.shape[-1]
    cell = cell.copy()
    if rng.random() < 0.5:
        x, errors = x[..., ::-1], errors[..., ::-1]
        cell[:, 1] = size - 1 - cell[:, 1]
    if rng.random() < 0.5:
        x, errors = x[..., ::-1, :], errors[..., ::-1, :]
        cell[:, 0] = size - 1 - cell[:, 0]
    if rng.random() < 0.5:
        x, errors = np.swapaxes(x, -1, -2), np.swapaxes(errors, -1, -2)
        cell = cell[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(errors), np.ascontiguousarray(cell)


def expert_tool(embeddings: Optional[str | Path] = None):
    """The evaluation's tool (registry default, guarded) reading cached embeddings (``learning.embeddings``)."""
    from ..registry import make_tool
    from ..volumes import disk_embeddings
    from .embeddings import DEFAULT_FOLDER

    tool = make_tool()
    disk_embeddings(tool.inner, embeddings or DEFAULT_FOLDER)
    return tool
