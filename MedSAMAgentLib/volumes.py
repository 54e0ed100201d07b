"""Volumes for the 3D workflow: read once, normalised once (``images.normalise_volume``), slices from memory.

``Volume`` holds the normalised (k, j, i) uint8 array and the geometry to write a mask back; ``slice_image``
is the engine's HxWx3 image of one slice along ``axis``. ``load_volume_case`` reads a 3D manifest row with its
ground truth. ``disk_embeddings`` keeps LiteMedSAM's embeddings on disk for long measurement runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .images import ImageLoadError, VolumeGeometry, load_array, normalise_volume, to_rgb
from .manifest import Case


@dataclass
class Volume:
    array: np.ndarray  # (k, j, i) uint8, one intensity mapping for all slices
    geometry: Optional[VolumeGeometry] = None
    axis: int = 0  # slices are taken along this array axis
    name: str = "volume"
    _keys: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_array(cls, array: np.ndarray, modality: Optional[str] = None, window=None,
                   geometry: Optional[VolumeGeometry] = None, axis: int = 0, name: str = "volume") -> "Volume":
        if not 0 <= axis < 3:
            raise ImageLoadError(f"slice axis must be 0, 1 or 2, got {axis}")
        return cls(normalise_volume(np.asarray(array), modality, window), geometry, axis, name)

    @classmethod
    def read(cls, path: str | Path, modality: Optional[str] = None, window=None, axis: int = 0) -> "Volume":
        array, geometry = load_array(path)
        if geometry is None or array.ndim != 3:
            raise ImageLoadError(f"{path} is not a 3D volume (shape {array.shape})")
        return cls.from_array(array, modality, window, geometry, axis, Path(path).name)

    @property
    def slices(self) -> int:
        return self.array.shape[self.axis]

    @property
    def slice_shape(self) -> tuple[int, int]:
        shape = list(self.array.shape)
        del shape[self.axis]
        return tuple(shape)  # type: ignore[return-value]

    def check_index(self, index: int) -> None:
        if not 0 <= index < self.slices:
            raise IndexError(f"slice {index} is outside 0..{self.slices - 1} along axis {self.axis}")

    def slice_image(self, index: int) -> np.ndarray:
        self.check_index(index)
        return to_rgb(np.take(self.array, index, axis=self.axis))

    def key(self, index: int) -> str:
        """The tool's embedding-cache key of a slice (content-based, so any two equal slices share one)."""
        if index not in self._keys:
            from .tools.litemedsam import image_key

            self._keys[index] = image_key(self.slice_image(index))
        return self._keys[index]

    def take(self, mask3d: np.ndarray, index: int) -> np.ndarray:
        return np.take(mask3d, index, axis=self.axis)

    def put(self, mask3d: np.ndarray, index: int, mask: np.ndarray) -> None:
        view = [slice(None)] * 3
        view[self.axis] = index
        mask3d[tuple(view)] = mask


def load_volume_case(case: Case) -> tuple[Volume, np.ndarray]:
    """A 3D manifest row as (normalised volume, ground truth (k, j, i) bool)."""
    if case.dims != 3:
        raise ImageLoadError(f"{case.id} is not a 3D row")
    if case.label is None:
        raise ImageLoadError(f"{case.id}: the mask holds several labels and the row names none")
    array, geometry = load_array(case.image)
    mask, _ = load_array(case.mask)
    if mask.shape != array.shape:
        raise ImageLoadError(f"{case.id}: mask {mask.shape} and image {array.shape} differ in size")
    return Volume.from_array(array, case.modality, geometry=geometry, name=case.id), mask == case.label


def write_mask(mask: np.ndarray, geometry: Optional[VolumeGeometry], path: str | Path) -> Path:
    """A (k, j, i) mask as a uint8 label volume (1 = foreground) with ``geometry``, written whole or not at all."""
    import SimpleITK as sitk

    from .outputs import atomic_path

    image = sitk.GetImageFromArray(np.asarray(mask, np.uint8))
    if geometry is not None:
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    path = Path(path)
    with atomic_path(path) as temporary:
        sitk.WriteImage(image, str(temporary), True)
    return path


def disk_embeddings(tool, folder: str | Path) -> None:
    """Make a LiteMedSAM-like tool (one with ``_encode(image)`` returning a numpy array or a torch tensor) read
    and write its embeddings as ``folder/<content key>.npy``: measurement sweeps over long volumes encode each
    slice once."""
    import torch

    from .tools.litemedsam import embedding_array, image_key

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encode = tool._encode

    def cached(image: np.ndarray):
        path = folder / f"{image_key(image)}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path)).to(tool.device)
        embedding = encode(image)
        np.save(path, embedding_array(embedding))
        return embedding

    tool._encode = cached


def has_disk_embedding(folder: str | Path, image: np.ndarray) -> bool:
    from .tools.litemedsam import image_key

    return (Path(folder) / f"{image_key(image)}.npy").exists()
