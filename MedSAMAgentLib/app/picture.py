"""What the browser app shows and segments: a 2D image, or a volume seen slice by slice.

A volume is shown as Slicer's axial (Red) view shows it, in radiological orientation (patient right on the
screen's left, anterior up): the slice plane and the pixel <-> voxel mapping come from
``slicer.geometry.plane_geometry`` with Slicer's axial SliceToRAS, so a slice here is the image the Slicer
panel gives the engine for the same view. Intensities are mapped once per volume (``model_volume``: a CT
window or one percentile range of the whole volume), as in the panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..images import (CT_WINDOWS, IMAGE_2D_SUFFIXES, VOLUME_SUFFIXES, ImageLoadError, VolumeGeometry,
                      check_contrast, largest_slice, load_array, save_volume, to_rgb)
from ..manifest import Case, load_case
from ..render import save_mask_png
from ..slicer.geometry import SliceGeometry, engine_image, model_volume, plane_geometry

# the volume intensity choices of the page, as ``model_volume`` takes them
WINDOWS = ("auto", "percentiles") + tuple(CT_WINDOWS)
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy", ".nii", ".nii.gz", ".nrrd")
# Slicer's axial view: screen right = patient left (-R), up = anterior (+A), normal = superior (+S)
AXIAL_SLICE_TO_RAS = np.array([[-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


@dataclass
class Flat:
    """A 2D image (HxWx3 uint8) with its ground truth, if known."""

    name: str
    image: np.ndarray
    truth: Optional[np.ndarray] = None
    target: str = ""
    slices: int = 1
    start: int = 0

    def slice_image(self, index: int) -> np.ndarray:
        return self.image

    def slice_truth(self, index: int) -> Optional[np.ndarray]:
        return self.truth

    def describe(self, index: int) -> dict:
        return {}

    def write_mask(self, masks: dict[int, np.ndarray], folder: Path) -> Path:
        path = folder / "mask.png"
        save_mask_png(masks.get(0, np.zeros(self.image.shape[:2], bool)), path)
        return path


@dataclass
class Volume:
    """A (k, j, i) volume with its geometry; ``window`` picks the intensity mapping (see ``WINDOWS``)."""

    name: str
    array: np.ndarray
    geometry: VolumeGeometry
    truth: Optional[np.ndarray] = None  # (k, j, i) bool
    target: str = ""
    window: str = "auto"
    start: int = 0  # the slice shown first
    _model: Optional[np.ndarray] = field(default=None, repr=False)
    _planes: dict[int, SliceGeometry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ImageLoadError(f"{self.name} is not a 3D volume (shape {self.array.shape})")
        middle = self.plane(None)
        self.axis = middle.axis
        self.slices = int(middle.dims[middle.axis])
        if self.truth is not None and self.truth.any():
            self.start = self._truth_slice()
        else:
            self.start = middle.index

    def set_window(self, window: str) -> None:
        if window not in WINDOWS:
            raise ImageLoadError(f"unknown intensity {window!r}; choose one of {', '.join(WINDOWS)}")
        if window != self.window:
            self.window, self._model = window, None

    @property
    def model(self) -> np.ndarray:
        if self._model is None:
            self._model = model_volume(self.array, self.window)
        return self._model

    def plane(self, index: Optional[int]) -> SliceGeometry:
        """The axial view's voxel slice ``index`` (None: the middle one)."""
        if index in self._planes:
            return self._planes[index]
        dims = tuple(int(d) for d in self.array.shape[::-1])  # (I, J, K)
        ijk = np.array([(d - 1) / 2 for d in dims] + [1.0])
        if index is not None:
            if not 0 <= index < self.slices:
                raise ImageLoadError(f"slice {index} is outside 0..{self.slices - 1}")
            ijk[self.axis] = index
        to_ras = self.geometry.ijk_to_ras
        view = AXIAL_SLICE_TO_RAS.copy()
        view[:3, 3] = (to_ras @ ijk)[:3]
        plane = plane_geometry(dims, to_ras, view, orientation="Axial", view="Red", volume_name=self.name)
        if index is not None:
            self._planes[index] = plane
        return plane

    def slice_image(self, index: int) -> np.ndarray:
        return check_contrast(engine_image(self.model, self.plane(index)), f"{self.name} slice {index}")

    def slice_truth(self, index: int) -> Optional[np.ndarray]:
        return None if self.truth is None else self.plane(index).extract(self.truth)

    def describe(self, index: int) -> dict:
        return {"slice": self.plane(index).describe(), "window": self.window}

    def write_mask(self, masks: dict[int, np.ndarray], folder: Path) -> Path:
        """Every segmented slice in one (k, j, i) label volume with the source's geometry."""
        volume = np.zeros(self.array.shape, np.uint8)
        for index, mask in masks.items():
            plane = self.plane(index)
            where = [slice(None)] * 3
            where[2 - plane.axis] = index
            volume[tuple(where)] = plane.to_ijk_plane(np.asarray(mask, np.uint8))
        path = folder / "mask.nii.gz"
        save_volume(volume, self.geometry, path)
        return path

    def _truth_slice(self) -> int:
        return largest_slice(self.truth, axis=2 - self.axis)


Picture = Flat | Volume


def from_case(case: Case) -> Picture:
    """A bundled or manifest case; 3D rows open as volumes on their largest ground-truth slice."""
    if case.dims == 3:
        array, geometry = load_array(case.image)
        mask, _ = load_array(case.mask)
        if case.label is None:
            raise ImageLoadError(f"{case.id}: the mask holds several labels and the row names none")
        if geometry is None or mask.shape != array.shape:
            raise ImageLoadError(f"{case.id}: mask {mask.shape} and image {array.shape} differ in size")
        window = "auto" if case.modality.upper() == "CT" else "percentiles"
        return Volume(case.id, array, geometry, mask == case.label, case.target, window)
    loaded = load_case(case)
    return Flat(case.id, loaded.image, loaded.ground_truth, case.target)


def from_upload(path: str | Path, window: str = "auto") -> Picture:
    """An uploaded file: PNG/JPEG/NPY as a 2D image, NIfTI/NRRD as a volume (no ground truth)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(UPLOAD_SUFFIXES):
        raise ImageLoadError(f"{path.name}: upload a 2D image ({', '.join(UPLOAD_SUFFIXES[:4])}) or a volume "
                             f"({', '.join(UPLOAD_SUFFIXES[4:])})")
    array, geometry = load_array(path)
    if name.endswith(VOLUME_SUFFIXES):
        if geometry is None or array.ndim != 3:
            raise ImageLoadError(f"{path.name} is not a 3D scalar volume (array {array.shape})")
        volume = Volume(path.name, array, geometry)
        volume.set_window(window)
        return volume
    if name.endswith(IMAGE_2D_SUFFIXES) and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        return Flat(path.name, check_contrast(to_rgb(array), path.name))
    raise ImageLoadError(f"{path.name} holds an array of shape {array.shape}, not a 2D image; upload volumes "
                         "as NIfTI or NRRD")
