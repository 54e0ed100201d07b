"""Trajectory logs: one JSON line per event, appended and flushed as it happens.

A log file holds one or more episodes. Records (``"type"``):
- ``episode``: start of an episode (image identity, target, tool, policy, letterbox, free ``meta``);
- ``step``: proposal (action, reason, policy, model text), decision, the applied action in pixel and 0..999
  coordinates, the mask (run-length encoded), score, IoU/Dice where ground truth is known, timings, ``extra``
  (e.g. RAS/IJK from Slicer);
- ``undo``: the last ``count`` steps were taken back;
- ``end``: how the episode ended; ``accepted`` marks a clinician-approved final mask (an expert trajectory).

Every record is flushed and fsync'ed when written, so a killed process leaves every completed step readable;
``read_episodes`` skips a torn last line instead of failing.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .actions import Action, action_from_dict

LOG_FORMAT_VERSION = 1


# -- masks --------------------------------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> dict:
    """Run-length encoding of a 2D boolean mask, row-major, counts start with a run of zeros."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": list(np.asarray(mask).shape), "counts": counts}


def decode_mask(data: dict) -> np.ndarray:
    size = tuple(data["size"])
    counts = np.asarray(data["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != int(np.prod(size)):
        raise ValueError(f"mask run lengths add up to {flat.size}, expected {int(np.prod(size))} for {size}")
    return flat.reshape(size)


# -- writing ------------------------------------------------------------------------------------------------
class TrajectoryWriter:
    """Appends records to a JSONL file, flushing each one to disk before returning."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=_json_default)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot log a {type(value).__name__}")


# -- the episode's image -------------------------------------------------------------------------------------
# Rule: an episode header's ``meta["image_path"]`` (relative to the log's folder, or absolute) names a .png or
# .npy holding the exact HxWx3 uint8 2D image the engine worked on; exports rebuild the policy's images from
# it. ``Session`` saves it next to the log by default; the generator points it at its ``images/`` folder.
def episode_images_folder(log_path: str | os.PathLike) -> Path:
    """``<log folder>/<log stem>.images``: where ``save_episode_image`` puts a log's images."""
    log_path = Path(log_path)
    stem = log_path.name.removesuffix(".partial").removesuffix(".jsonl")
    return log_path.parent / f"{stem}.images"


def save_episode_image(log_path: str | os.PathLike, name: str, image: np.ndarray) -> str:
    """Save ``image`` as ``<log folder>/<log stem>.images/<name>.png``; returns the path relative to the log's
    folder, for ``meta["image_path"]``."""
    from PIL import Image

    folder = episode_images_folder(log_path)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{name}.png")
    return f"{folder.name}/{name}.png"


def load_episode_image(header: dict, log_path: str | os.PathLike) -> np.ndarray:
    """The episode's 2D engine image (HxWx3 uint8) from ``meta["image_path"]``. Raises ``ValueError``."""
    relative = (header.get("meta") or {}).get("image_path")
    if not relative:
        raise ValueError(f"episode {header.get('episode_id')} in {log_path} records no meta.image_path")
    path = Path(log_path).parent / relative
    if path.suffix.lower() == ".npy":
        image = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as handle:
            image = np.asarray(handle.convert("RGB"))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: expected the HxWx3 uint8 engine image, got {image.shape} {image.dtype}")
    shape = (header.get("image") or {}).get("shape")
    if shape and list(image.shape[:2]) != list(shape):
        raise ValueError(f"{path} is {image.shape[:2]}, the episode was logged on a {tuple(shape)} image")
    return image


# -- reading ------------------------------------------------------------------------------------------------
@dataclass
class LoggedStep:
    record: dict

    @property
    def applied(self) -> Optional[Action]:
        data = self.record.get("applied")
        return None if data is None else action_from_dict(data)

    @property
    def proposed(self) -> Optional[Action]:
        data = (self.record.get("proposal") or {}).get("action")
        return None if data is None else action_from_dict(data)

    @property
    def decision(self) -> str:
        return self.record["decision"]

    @property
    def mask(self) -> Optional[np.ndarray]:
        data = self.record.get("mask")
        return None if data is None else decode_mask(data)


@dataclass
class Episode:
    """An episode as it stands after its undos: ``steps`` are the ones still in effect."""

    header: dict
    steps: list[LoggedStep] = field(default_factory=list)
    end: Optional[dict] = None
    undone: list[LoggedStep] = field(default_factory=list)

    @property
    def episode_id(self) -> str:
        return self.header["episode_id"]

    @property
    def accepted(self) -> bool:
        return bool(self.end and self.end.get("accepted"))

    @property
    def final_mask(self) -> Optional[np.ndarray]:
        if self.end and self.end.get("final_mask"):
            return decode_mask(self.end["final_mask"])
        for step in reversed(self.steps):
            if step.record.get("mask") is not None:
                return step.mask
        return None


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records of one log file; a torn or corrupt line (a writer killed mid-line) is skipped with a warning."""
    with Path(path).open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipped an unreadable (torn) log line", stacklevel=2)


def read_episodes(*paths: str | os.PathLike) -> list[Episode]:
    """Load logs back into episodes, applying undo records."""
    episodes: dict[str, Episode] = {}
    for path in paths:
        for record in iter_records(path):
            kind = record.get("type")
            episode_id = record.get("episode_id")
            if kind == "episode":
                episodes[episode_id] = Episode(header=record)
                continue
            episode = episodes.get(episode_id)
            if episode is None:
                warnings.warn(f"{path}: record for unknown episode {episode_id!r} skipped", stacklevel=2)
                continue
            if kind == "step":
                episode.steps.append(LoggedStep(record))
            elif kind == "undo":
                for _ in range(int(record.get("count", 1))):
                    if episode.steps:
                        episode.undone.append(episode.steps.pop())
            elif kind == "end":
                episode.end = record
    return list(episodes.values())
