"""The case manifest format of ../shared/data (one JSON object per line), and loading a case as a 2D task.

The same format describes the bundled sample cases (``bundled_manifest()``), so the demo, the tests and the
benchmarks all read cases one way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .images import (ImageLoadError, SliceMapping, check_contrast, largest_slice, load_array, take_slice,
                     to_rgb)

BUNDLED_DATA = Path(__file__).resolve().parent / "data"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    mask: Path
    dims: int
    target: str = ""
    modality: str = ""
    mask_threshold: Optional[float] = None
    label: Optional[int] = None
    slice: Optional[int] = None
    licence: str = ""
    source: str = ""
    expert_label: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The case id without its last component, e.g. ``medscribble/ACDC``."""
        return self.id.rsplit("/", 1)[0] if "/" in self.id else self.id

    @property
    def single_target(self) -> bool:
        """False for 3D rows whose mask holds several labels and no ``label`` says which one to segment."""
        return not (self.dims == 3 and self.label is None)


@dataclass
class LoadedCase:
    case: Case
    image: np.ndarray  # HxWx3 uint8
    ground_truth: np.ndarray  # HxW bool
    slice: Optional[SliceMapping] = None  # for cases taken from a volume


_KNOWN = {"id", "image", "mask", "dims", "target", "modality", "mask_threshold", "label", "slice", "licence",
          "source", "expert_label"}


def read_manifest(path: str | Path) -> list[Case]:
    """Cases of a manifest file; image and mask paths are resolved relative to the manifest's folder. Every
    field is checked (``_case_from_row``); a bad row raises ``ValueError`` naming the file, the line and the
    field, before any case is run."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: the line is not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON line ({error.msg})") from None
        case = _case_from_row(row, path.parent, where)
        if case.id in seen:
            raise ValueError(f"{where}: id {case.id!r} repeats line {seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
    return cases


def _case_from_row(row: Any, folder: Path, where: str) -> Case:
    """One manifest row as a ``Case``; any field of the wrong kind raises ``ValueError`` naming it."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a manifest row must be a JSON object, got {type(row).__name__}")

    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{where}: {key!r} must be {expected}, got {row[key]!r}")

    for key in ("id", "image", "mask"):
        if key not in row:
            raise ValueError(f"{where}: the row has no {key!r} (required: id, image, mask)")
        if not isinstance(row[key], str) or not row[key].strip():
            raise bad(key, "a non-empty string")
    for key in ("target", "modality", "licence", "source"):
        if key in row and not isinstance(row[key], str):
            raise bad(key, "a string")
    dims = row.get("dims", 2)
    if isinstance(dims, bool) or dims not in (2, 3):
        raise bad("dims", "2 or 3")
    threshold = row.get("mask_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise bad("mask_threshold", "a finite number or null")
    for key, low in (("label", None), ("slice", 0)):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or (low is not None and value < low)):
            raise bad(key, "a whole number" + (f" >= {low}" if low is not None else "") + " or null")
    expert = row.get("expert_label", True)
    if not isinstance(expert, bool):
        raise bad("expert_label", "true or false")
    return Case(
        id=row["id"], image=folder / row["image"], mask=folder / row["mask"], dims=int(dims),
        target=row.get("target", ""), modality=row.get("modality", ""), mask_threshold=threshold,
        label=row.get("label"), slice=row.get("slice"), licence=row.get("licence", ""),
        source=row.get("source", ""), expert_label=expert,
        extra={k: v for k, v in row.items() if k not in _KNOWN},
    )


def bundled_manifest() -> list[Case]:
    """The small real cases shipped with the package (see data/LICENSES.md)."""
    return read_manifest(BUNDLED_DATA / "manifest.jsonl")


def load_case(case: Case) -> LoadedCase:
    """The case as a 2D task: 2D rows as they are; 3D rows on the slice along array axis 0 with the largest
    foreground, unless the row names a ``slice``."""
    image, geometry = load_array(case.image)
    mask, _ = load_array(case.mask)
    if mask.ndim == 3 and mask.shape[2] in (3, 4) and case.dims == 2:
        mask = mask[..., 0]
    if case.dims == 3:
        if case.label is None:
            raise ImageLoadError(f"{case.id}: the mask holds several labels and the row names none")
        foreground = mask == case.label
    elif case.mask_threshold is not None:
        foreground = mask > case.mask_threshold
    else:
        foreground = mask > 0
    if foreground.shape[: image.ndim if case.dims == 3 else 2] != image.shape[: foreground.ndim]:
        raise ImageLoadError(f"{case.id}: mask {foreground.shape} and image {image.shape} differ in size")
    mapping = None
    if case.dims == 3:
        index = case.slice if case.slice is not None else largest_slice(foreground, axis=0)
        image, mapping = take_slice(image, 0, index)
        foreground, _ = take_slice(foreground, 0, index)
    engine_image = check_contrast(to_rgb(image, case.modality), f"{case.id} ({case.image})")
    return LoadedCase(case, engine_image, np.ascontiguousarray(foreground), mapping)
