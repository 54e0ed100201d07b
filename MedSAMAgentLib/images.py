"""Loading images and masks, taking 2D slices of volumes, and intensity preprocessing.

The engine works on one 2D image at a time, as HxWx3 uint8 (AGENT_PROTOCOL.md, "Image preprocessing": scale
to 0..255, replicate to 3 channels). Volumes are read with SimpleITK into arrays in (k, j, i) order, the same
order as Slicer's ``arrayFromVolume``; ``SliceMapping`` keeps the way back from slice pixels to voxel indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

IMAGE_2D_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

# CT windows as (low, high) in HU (AGENT_PROTOCOL.md); "soft_tissue" is level 40 / width 400.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),
    "lung": (-1000.0, 1000.0),
    "pelvis": (-55.0, 200.0),
    "liver": (-25.0, 230.0),
    "soft_tissue": (-160.0, 240.0),
}
DEFAULT_CT_WINDOW = "soft_tissue"


class ImageLoadError(ValueError):
    """An image or mask could not be read or has the wrong shape; the message names the file."""


class NonFiniteWarning(UserWarning):
    """Some pixels were NaN or infinite and were repaired (``repair_non_finite``)."""


@dataclass(frozen=True)
class VolumeGeometry:
    """Spacing, origin and direction of a volume, in SimpleITK's (x, y, z) = (i, j, k) convention."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 voxel (i, j, k) -> world RAS, as Slicer's ``GetIJKToRASMatrix`` (files are LPS; Slicer is RAS)."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.reshape(self.direction, (3, 3)) * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix


@dataclass(frozen=True)
class SliceMapping:
    """Where a 2D slice came from: slice pixel (x = column, y = row) -> voxel index in array order."""

    axis: int
    index: int

    def to_voxel(self, x: float, y: float) -> tuple[int, int, int]:
        row, col = int(round(y)), int(round(x))
        voxel = [row, col]
        voxel.insert(self.axis, self.index)
        return tuple(voxel)  # type: ignore[return-value]

    def to_pixel(self, voxel: tuple[int, int, int]) -> tuple[int, int]:
        if voxel[self.axis] != self.index:
            raise ValueError(f"voxel {voxel} is not on slice {self.axis}:{self.index}")
        rest = [v for a, v in enumerate(voxel) if a != self.axis]
        return rest[1], rest[0]  # (x, y)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_array(path: str | Path) -> tuple[np.ndarray, Optional[VolumeGeometry]]:
    """Read a 2D image (npy, png, jpg, ...) or a 3D volume (NIfTI, NRRD, MHA). Volumes come with geometry."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"no such file: {path}")
    suffix = _suffix(path)
    if suffix not in IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES:
        raise ImageLoadError(f"unsupported file type {suffix!r} for {path}; use one of "
                             f"{', '.join(IMAGE_2D_SUFFIXES + VOLUME_SUFFIXES)}")
    geometry = None
    try:
        if suffix == ".npy":
            with path.open("rb") as handle:
                if handle.read(6) != b"\x93NUMPY":
                    raise ImageLoadError(f"{path} is not a NumPy .npy file (no .npy header)")
            array = np.load(path, allow_pickle=False)
        elif suffix in IMAGE_2D_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
        else:
            import SimpleITK as sitk

            image = sitk.ReadImage(str(path))
            geometry = VolumeGeometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
            array = sitk.GetArrayFromImage(image)
    except ImageLoadError:
        raise
    except Exception as error:  # the readers raise many types; name the file and the reason
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "pickled" in reason:  # numpy's advice to allow pickles would run code from the file: never
            reason = "it holds pickled Python objects, not a plain array (not loaded: unpickling can run code)"
        raise ImageLoadError(f"cannot read {path}: {reason}") from None
    return repair_non_finite(check_pixels(array, path), path), geometry


def check_pixels(array: np.ndarray, source: object = "image") -> np.ndarray:
    """The array if it holds pixels the engine can use (numbers, at least one); else ``ImageLoadError``."""
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageLoadError(f"{source}: pixels of type {array.dtype} are not intensities (expected integers "
                             "or floats)")
    if array.size == 0:
        raise ImageLoadError(f"{source}: the image is empty (shape {array.shape})")
    return array


def repair_non_finite(array: np.ndarray, source: object = "image") -> np.ndarray:
    """NaN and -inf -> the smallest finite value, +inf -> the largest, with a ``NonFiniteWarning`` naming
    ``source`` and the counts (a few bad voxels must not blank the whole image's intensity scaling). An image
    with no finite pixel at all raises ``ImageLoadError``."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        raise ImageLoadError(f"{source}: no pixel is a finite number (all NaN or infinite)")
    values = array[finite]
    low, high = values.min(), values.max()
    nan, pos = int(np.isnan(array).sum()), int(np.isposinf(array).sum())
    neg = int(array.size - finite.sum()) - nan - pos
    warnings.warn(f"{source}: {array.size - int(finite.sum())} of {array.size} pixels are not finite "
                  f"({nan} NaN, {pos} +inf, {neg} -inf); NaN and -inf set to the minimum {low:g}, +inf to the "
                  f"maximum {high:g}", NonFiniteWarning, stacklevel=3)
    repaired = np.where(np.isposinf(array), high, array)
    return np.where(np.isnan(repaired) | np.isneginf(repaired), low, repaired).astype(array.dtype)


def check_contrast(image: np.ndarray, source: object = "image") -> np.ndarray:
    """The engine image if it is not constant; a constant image (all black, one value) has nothing to
    segment, so it is refused with ``ImageLoadError`` rather than given a mask."""
    if image.size and image.min() == image.max():
        raise ImageLoadError(f"{source}: the image is constant (every pixel is {image.flat[0]}) after intensity "
                             "scaling: nothing to segment")
    return image


def take_slice(volume: np.ndarray, axis: int, index: int) -> tuple[np.ndarray, SliceMapping]:
    """The 2D slice ``index`` along array ``axis`` of a (k, j, i) volume, with its mapping back to voxels."""
    if volume.ndim != 3:
        raise ImageLoadError(f"expected a 3D volume, got shape {volume.shape}")
    if not 0 <= axis < 3:
        raise ImageLoadError(f"slice axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < volume.shape[axis]:
        raise ImageLoadError(f"slice index {index} is outside 0..{volume.shape[axis] - 1} along axis {axis}")
    return np.take(volume, index, axis=axis), SliceMapping(axis, index)


def largest_slice(mask: np.ndarray, axis: int = 0) -> int:
    """Index of the slice along ``axis`` with the most foreground."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    areas = np.asarray(mask, bool).sum(axis=other)
    if not areas.any():
        raise ImageLoadError("the mask has no foreground on any slice")
    return int(np.argmax(areas))


# -- intensities ------------------------------------------------------------------------------------------
def window_ct(image: np.ndarray, window: str | tuple[float, float] = DEFAULT_CT_WINDOW) -> np.ndarray:
    """Clip HU to a window and scale to 0..255 (uint8)."""
    low, high = CT_WINDOWS[window] if isinstance(window, str) else window
    scaled = (np.clip(image.astype(np.float32), low, high) - low) / max(high - low, 1e-6)
    return np.round(scaled * 255).astype(np.uint8)


def percentile_normalise(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the percentiles of the non-zero pixels and scale to 0..255 (uint8), for non-CT modalities."""
    data = image.astype(np.float32)
    values = data[data != 0]
    if values.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return np.round((np.clip(data, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def to_uint8(image: np.ndarray, modality: Optional[str] = None, window: Optional[str] = None) -> np.ndarray:
    """Intensities -> uint8 by the protocol: uint8 kept, [0, 1] floats scaled, CT windowed, others percentiles.
    Non-finite pixels are repaired first (``repair_non_finite``)."""
    if image.dtype == np.uint8:
        return image
    image = repair_non_finite(check_pixels(image))
    if np.issubdtype(image.dtype, np.floating) and image.size and image.min() >= 0 and image.max() <= 1:
        return np.round(image * 255).astype(np.uint8)
    if (modality or "").upper() == "CT" or window is not None:
        return window_ct(image, window or DEFAULT_CT_WINDOW)
    return percentile_normalise(image)


def normalise_volume(volume: np.ndarray, modality: Optional[str] = None,
                     window: Optional[str | tuple[float, float]] = None) -> np.ndarray:
    """A whole volume -> uint8 with ONE mapping for all slices (one CT window, or one percentile range of the
    volume's non-zero voxels), so neighbouring slices look alike to the tool. The engine's volume session and
    the Slicer panel both call this; slices are then ``to_rgb(normalised[k])``."""
    if volume.ndim != 3:
        raise ImageLoadError(f"expected a 3D volume, got shape {volume.shape}")
    return to_uint8(volume, modality, window)


def to_rgb(image: np.ndarray, modality: Optional[str] = None, window: Optional[str] = None) -> np.ndarray:
    """A 2D image (grey HxW, HxWx1, RGB or RGBA) as the engine's HxWx3 uint8."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return to_uint8(image[..., :3], modality, window)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ImageLoadError(f"expected a 2D image, got shape {image.shape}")
    grey = to_uint8(image, modality, window)
    return np.repeat(grey[..., None], 3, axis=2)


def load_image_2d(
    path: str | Path,
    slice_spec: Optional[tuple[int, int]] = None,
    modality: Optional[str] = None,
    window: Optional[str] = None,
) -> tuple[np.ndarray, Optional[SliceMapping]]:
    """Any supported file as the engine's HxWx3 uint8 image; volumes need ``slice_spec`` = (axis, index)."""
    array, geometry = load_array(path)
    mapping = None
    if geometry is not None or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        if slice_spec is None:
            raise ImageLoadError(f"{path} is a volume {array.shape}: say which slice (AXIS:INDEX)")
        array, mapping = take_slice(array, *slice_spec)
    elif slice_spec is not None:
        raise ImageLoadError(f"{path} is a 2D image {array.shape}: --slice applies to volumes only")
    return check_contrast(to_rgb(array, modality, window), path), mapping


def save_volume(array: np.ndarray, geometry: Optional[VolumeGeometry], path: str | Path) -> None:
    """Write a (k, j, i) array (e.g. a mask) as NIfTI/NRRD with the source volume's spacing, origin and
    direction, so it lies on that volume in Slicer and other viewers."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if geometry is not None:
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(path), useCompression=True)


def resize_bilinear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2D float array resized to ``size`` (h, w) as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` does it (half-pixel centres, edges clamped, no antialiasing), in numpy, so the tool's
    logits are upsampled without torch (issue 17). Matches torch to ~1e-5 (tested): the source coordinate is
    rounded to float32 once, as torch's fused multiply-add does; rounding it twice moves a pixel that falls on a
    source row to the neighbouring interval (up to 3e-4 apart on random logits)."""
    array = np.asarray(array, np.float32)

    def axis(n_in: int, n_out: int):
        scale = np.float64(np.float32(n_in / n_out))  # torch's float scale; the product below is exact in float64
        source = np.maximum(((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32), 0)
        low = np.minimum(source.astype(np.int64), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        weight = (source - low).astype(np.float32)
        return low, high, weight

    h0, h1, hw = axis(array.shape[0], size[0])
    w0, w1, ww = axis(array.shape[1], size[1])
    columns = np.take(array, w0, axis=1) * (1 - ww) + np.take(array, w1, axis=1) * ww  # along w first, as torch
    out = columns[h0]  # whole rows: contiguous copies; in place from here (this runs on every click)
    out *= (1 - hw)[:, None]
    upper = columns[h1]
    upper *= hw[:, None]
    out += upper
    return out
