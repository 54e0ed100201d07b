"""The case manifest format of ../shared/data (one JSON object per line), and loading a case as a 2D task.

The same format describes the bundled sample cases (``bundled_manifest()``), so the demo, the tests and the
benchmarks all read cases one way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .images import ImageLoadError, SliceMapping, largest_slice, load_array, take_slice, to_rgb

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
    """Cases of a manifest file; image and mask paths are resolved relative to the manifest's folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cases.append(
                Case(
                    id=row["id"],
                    image=path.parent / row["image"],
                    mask=path.parent / row["mask"],
                    dims=int(row.get("dims", 2)),
                    target=row.get("target", ""),
                    modality=row.get("modality", ""),
                    mask_threshold=row.get("mask_threshold"),
                    label=row.get("label"),
                    slice=row.get("slice"),
                    licence=row.get("licence", ""),
                    source=row.get("source", ""),
                    expert_label=bool(row.get("expert_label", True)),
                    extra={k: v for k, v in row.items() if k not in _KNOWN},
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: bad manifest row ({error})") from None
    return cases


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
    return LoadedCase(case, to_rgb(image, case.modality), np.ascontiguousarray(foreground), mapping)
