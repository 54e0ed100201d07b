"""Trajectory logs: one JSON line per event, appended and flushed as it happens.

A log file holds one or more episodes. Records (``"type"``):
- ``episode``: start of an episode (image identity, target, tool, policy, letterbox, free ``meta``);
- ``step``: proposal (action, reason, policy, model text), decision, the applied action in pixel and 0..999
  coordinates, the mask (run-length encoded), score, IoU/Dice where ground truth is known, timings, ``extra``
  (e.g. RAS/IJK from Slicer);
- ``undo``: the last ``count`` steps were taken back;
- ``pause``: the policy could not act (``reason``: server down, unusable answer, ...); the episode goes on;
- ``end``: how the episode ended; ``accepted`` marks a clinician-approved final mask (an expert trajectory);
  ``reason`` says why a paused or failed episode stopped.

Every record is flushed and fsync'ed when written, so a killed process leaves every completed step readable.
Readers keep whatever they can: a line that is torn, not UTF-8, not JSON or not a JSON object, a record of an
unknown type, or a step whose action cannot be read is skipped with a warning naming the file and line, and
the episode it belonged to is marked (``Episode.problems``) so exports leave it out.
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
    """An episode as it stands after its undos: ``steps`` are the ones still in effect. ``problems`` lists
    what could not be read (``file:line: why``); an episode with problems is shown but never exported."""

    header: dict
    steps: list[LoggedStep] = field(default_factory=list)
    end: Optional[dict] = None
    undone: list[LoggedStep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

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


RECORD_TYPES = ("episode", "step", "undo", "pause", "end")


def _skip(where: str, why: str) -> str:
    warnings.warn(f"{where}: {why}; skipped", stacklevel=3)
    return f"{where}: {why}"


def iter_numbered(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) of one log file. A line that is torn (a writer killed mid-line), not UTF-8,
    not JSON or not a JSON object is skipped with a warning naming the file and line; the rest is kept."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                _skip(where, "not UTF-8 text")
                continue
            except json.JSONDecodeError:
                _skip(where, "unreadable (torn or not JSON) log line")
                continue
            if not isinstance(record, dict):
                _skip(where, f"a log record must be a JSON object, got {type(record).__name__}")
                continue
            yield number, record


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """Records of one log file (see ``iter_numbered`` for what is skipped)."""
    for _number, record in iter_numbered(path):
        yield record


def _step_problem(record: dict) -> Optional[str]:
    """Why a step record cannot be used (its actions or mask unreadable), or None."""
    try:
        step = LoggedStep(record)
        step.applied, step.proposed  # noqa: B018 - parsing is the check
        if not isinstance(record.get("decision"), str):
            return "a step without a decision"
        if not isinstance(record.get("index"), int):
            return "a step without an index"
        mask = record.get("mask")
        if mask is not None and (not isinstance(mask, dict) or "size" not in mask or "counts" not in mask):
            return "a step whose mask is not run-length encoded"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        return f"a step that cannot be read ({error})"
    return None


def read_episodes(*paths: str | os.PathLike) -> list[Episode]:
    """Load logs back into episodes, applying undo records. Nothing unreadable stops the reading: it is
    skipped with a warning (file and line) and noted in the episode's ``problems``."""
    episodes: dict[str, Episode] = {}
    for path in paths:
        for number, record in iter_numbered(path):
            where = f"{path}:{number}"
            kind = record.get("type")
            episode_id = record.get("episode_id")
            if kind not in RECORD_TYPES:
                problem = _skip(where, f"record of unknown type {kind!r} (a newer version's log?)")
                if episode_id in episodes:
                    episodes[episode_id].problems.append(problem)
                continue
            if kind == "episode":
                if not isinstance(episode_id, str):
                    _skip(where, "episode header without an episode_id")
                    continue
                episodes[episode_id] = Episode(header=record)
                continue
            episode = episodes.get(episode_id) if isinstance(episode_id, str) else None
            if episode is None:
                _skip(where, f"record for unknown episode {episode_id!r}")
                continue
            if kind == "step":
                problem = _step_problem(record)
                if problem:
                    episode.problems.append(_skip(where, problem))
                else:
                    episode.steps.append(LoggedStep(record))
            elif kind == "undo":
                count = record.get("count", 1)
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    episode.problems.append(_skip(where, f"undo with a bad count {count!r}"))
                    continue
                for _ in range(count):
                    if episode.steps:
                        episode.undone.append(episode.steps.pop())
            elif kind == "end":
                episode.end = record
    return list(episodes.values())


def prune_episode_images(log_path: str | os.PathLike) -> int:
    """Delete the images in the log's image folder that no episode of the log names (an earlier run's, once
    this run's log is in place); returns how many were deleted."""
    folder = episode_images_folder(log_path)
    if not folder.is_dir():
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metas = [r.get("meta") for r in iter_records(log_path) if r.get("type") == "episode"]
        named = {(Path(log_path).parent / str(m.get("image_path") or "")).resolve() for m in metas
                 if isinstance(m, dict)}
    removed = 0
    for image in folder.iterdir():
        if image.is_file() and image.resolve() not in named:
            image.unlink()
            removed += 1
    return removed
