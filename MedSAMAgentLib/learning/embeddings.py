"""Training cases from a manifest and their LiteMedSAM image embeddings, cached on disk.

Why one module: everything that learns on top of the frozen LiteMedSAM encoder (the click-trained decoder,
issue 14; a learned policy, issue 15) needs the same two things -- cases (image, ground truth, group, whether
the row's licence lets derived weights be redistributed) and their embeddings. Preprocessing has one place:
images come from ``manifest.load_case`` (so the slice ``evaluate --protocol clicks`` scores is the same
array, and shares its embedding), and embeddings from the tool's own ``_encode`` through
``volumes.disk_embeddings`` (files ``<folder>/<image_key>.npy``, keyed by content).

3D rows give their largest-foreground slice (the evaluated one) plus up to ``slices_per_volume - 1`` more
foreground slices spread along axis 0, each normalised exactly as ``load_case`` does for its slice.

    python -m MedSAMAgentLib.learning.embeddings [--manifest FILE] [--folder DIR] [--slices-per-volume N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ..evaluation import Skipped
from ..images import ImageLoadError, load_array
from ..manifest import SHARED_DATA, Case, load_case, read_manifest

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "runs" / "embeddings"  # gitignored
SLICES_PER_VOLUME = 6
MIN_SLICE_PIXELS = 20  # extra 3D slices with less foreground than this are not training cases

# Licences under which weights trained on the data may be shipped with an Apache-2.0 package (attribution in
# data/LICENSES.md). Not included: non-commercial (CC BY-NC-*, research-only: COVID, DRIVE, BraTS, CHAOS,
# PAXRay), GPL-3.0 (WBC, ITK-SNAP), share-alike CC BY-SA (the weights would have to be BY-SA), "not stated"
# (ACDC) and undocumented provenance (the PyRadiomics volume).
DERIVED_WEIGHTS_LICENCES = ("CC BY 4.0", "CC0 1.0", "MIT")


def allows_derived_weights(licence: str) -> bool:
    """True when a row's licence text starts with one of ``DERIVED_WEIGHTS_LICENCES`` and says nothing of
    undocumented provenance."""
    text = (licence or "").strip()
    return any(text.startswith(name) for name in DERIVED_WEIGHTS_LICENCES) and "undocumented" not in text


@dataclass
class TrainingCase:
    """One 2D training image with its target."""

    id: str  # the row id; extra 3D slices add "#z<index>"
    row_id: str
    group: str  # Case.group: the unit a leave-datasets-out fold holds out
    image: np.ndarray  # HxWx3 uint8, as load_case gives it
    mask: np.ndarray  # HxW bool
    licence: str
    derived_weights_ok: bool
    key: str  # image_key(image): the embedding's name in the cache
    slice: Optional[int] = None  # axis-0 slice of a 3D row
    evaluated: bool = True  # the image evaluate --protocol clicks scores (2D rows; 3D rows' largest slice)
    expert_label: bool = True


def _volume_slices(case: Case, count: int, min_pixels: int) -> list[int]:
    """The largest-foreground slice first, then up to ``count - 1`` others spread over the foreground."""
    mask, _ = load_array(case.mask)
    areas = (mask == case.label).sum(axis=(1, 2))
    largest = int(np.argmax(areas))
    others = [int(i) for i in np.flatnonzero(areas >= min_pixels) if i != largest]
    if count > 1 and others:
        picks = np.linspace(0, len(others) - 1, min(count - 1, len(others))).round().astype(int)
        others = sorted({others[i] for i in picks})
    else:
        others = []
    return [largest] + others


def training_cases(cases: Iterable[Case], slices_per_volume: int = SLICES_PER_VOLUME,
                   min_pixels: int = MIN_SLICE_PIXELS) -> tuple[list[TrainingCase], list[Skipped]]:
    """The manifest's cases as training images (see the module docstring) and the rows skipped, with why."""
    from ..tools.litemedsam import image_key

    out: list[TrainingCase] = []
    skipped: list[Skipped] = []
    for case in cases:
        if not case.single_target:
            skipped.append(Skipped(case.id, "the mask holds several labels and the row names none"))
            continue
        try:
            slices: list[Optional[int]] = [None]
            if case.dims == 3:
                slices = [case.slice] if case.slice is not None else _volume_slices(case, slices_per_volume,
                                                                                     min_pixels)
            for n, index in enumerate(slices):
                task = load_case(case if index is None else dataclasses.replace(case, slice=index))
                if not task.ground_truth.any():
                    if n == 0:
                        skipped.append(Skipped(case.id, "the ground truth is empty"))
                    continue
                out.append(TrainingCase(
                    id=case.id if n == 0 else f"{case.id}#z{index}", row_id=case.id, group=case.group,
                    image=task.image, mask=task.ground_truth, licence=case.licence,
                    derived_weights_ok=allows_derived_weights(case.licence), key=image_key(task.image),
                    slice=index, evaluated=n == 0, expert_label=case.expert_label))
        except (ImageLoadError, FileNotFoundError, OSError, ValueError) as error:
            skipped.append(Skipped(case.id, f"cannot load: {error}"))
    return out, skipped


class EmbeddingCache:
    """LiteMedSAM image embeddings (1 x 256 x 64 x 64 float32) on disk, keyed by image content; computed with
    the tool's own encoder the first time an image is asked for."""

    def __init__(self, folder: str | Path = DEFAULT_FOLDER, tool=None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tool = tool
        self._wrapped = False

    @property
    def tool(self):
        """The LiteMedSAM tool whose encoder fills the cache (made on first need: reading costs nothing)."""
        if self._tool is None:
            from ..tools.litemedsam import LiteMedSAM

            self._tool = LiteMedSAM()
        if not self._wrapped:
            from ..volumes import disk_embeddings

            disk_embeddings(self._tool, self.folder)
            self._wrapped = True
        return self._tool

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def has(self, case: TrainingCase) -> bool:
        return self.path(case.key).exists()

    def get(self, case: TrainingCase) -> np.ndarray:
        """The embedding of ``case.image``: read from disk, else encoded (and written) now."""
        path = self.path(case.key)
        if path.exists():
            return np.load(path)
        from ..tools.litemedsam import embedding_array

        return embedding_array(self.tool._encode(case.image))

    def build(self, cases: Sequence[TrainingCase], progress: bool = True) -> int:
        """Encode every case whose embedding is not on disk yet; returns how many were encoded."""
        missing = {c.key: c for c in cases if not self.has(c)}
        items = list(missing.values())
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="embeddings", unit="image", file=sys.stderr, dynamic_ncols=True)
        for case in items:
            self.get(case)
        return len(missing)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Cache LiteMedSAM embeddings of a manifest's training cases.")
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--slices-per-volume", type=int, default=SLICES_PER_VOLUME)
    args = parser.parse_args(argv)
    cases, skipped = training_cases(read_manifest(args.manifest), args.slices_per_volume)
    cache = EmbeddingCache(args.folder)
    encoded = cache.build(cases)
    keys = {c.key for c in cases}
    print(f"{len(cases)} training cases ({sum(c.evaluated for c in cases)} evaluated images, "
          f"{sum(c.derived_weights_ok for c in cases)} under licences that allow derived weights), "
          f"{len(keys)} distinct images, {encoded} encoded now; {len(skipped)} rows skipped; cache {cache.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
