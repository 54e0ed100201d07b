"""Reading and writing any IJK region of a segment (a slice, a slab, a whole 3D segment), touching nothing
else.

Writes go through ``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment`` with a
``vtkOrientedImageData`` covering only the bounding box of the changed voxels: voxels to add are merged in
with MODE_MERGE_MAX, voxels to remove with MODE_MERGE_MIN of the inverted region, both limited to that
extent, so voxels outside it keep their content exactly. Reads take the region straight from the
segmentation's labelmap layers when they lie on the volume's grid (no copy of whole labelmaps; a slow
resampling path otherwise), so a write costs the region's size, not the number of segments times the
volume. The edited segment is moved to a labelmap layer of its own once (content unchanged), so merges into it
never reach other segments' voxels. With ``protect_other_segments`` the mask is also kept off
voxels that other segments already hold (Segment Editor's "overwrite other segments: none").

Imports only ``slicer``, ``vtk`` and ``numpy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .geometry import SliceGeometry, node_to_world, vtk_matrix_to_numpy


class SegmentWriteError(RuntimeError):
    """A segment could not be read or written; the message names the segment."""


def _local_ijk_to_ras(volume_node) -> "object":
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix


def ensure_segment(segmentation_node, volume_node, segment_id: str = "", name: str = "") -> str:
    """The segment to write into: ``segment_id`` if it exists, else a new empty segment (named ``name``)."""
    segmentation = segmentation_node.GetSegmentation()
    if segment_id and segmentation.GetSegment(segment_id) is not None:
        return segment_id
    if segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole()) is None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    new_id = segmentation.AddEmptySegment("", name or "MedSAMAgent")
    if not new_id:
        raise SegmentWriteError(f"could not add a segment to '{segmentation_node.GetName()}'")
    return new_id


def check_same_space(segmentation_node, volume_node) -> None:
    """Writes use the volume's voxel grid in the segmentation's local space: their transforms must agree."""
    if not np.allclose(node_to_world(segmentation_node), node_to_world(volume_node), atol=1e-6):
        raise SegmentWriteError(
            f"'{segmentation_node.GetName()}' and '{volume_node.GetName()}' are under different transforms: "
            "put them under the same transform (or harden both)")


def _array_of(image, extent: list[int]) -> np.ndarray:
    """The image's voxels over ``extent`` as a (k, j, i) array: zero where the image does not reach."""
    from vtk.util import numpy_support

    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    out = np.zeros(shape, np.int32)
    scalars = image.GetPointData().GetScalars()
    have = image.GetExtent()
    if scalars is None or have[0] > have[1] or have[2] > have[3] or have[4] > have[5]:
        return out
    values = numpy_support.vtk_to_numpy(scalars).reshape(
        have[5] - have[4] + 1, have[3] - have[2] + 1, have[1] - have[0] + 1)
    lo = [max(extent[2 * a], have[2 * a]) for a in range(3)]
    hi = [min(extent[2 * a + 1], have[2 * a + 1]) for a in range(3)]
    if any(l > h for l, h in zip(lo, hi)):
        return out
    src = tuple(slice(lo[a] - have[2 * a], hi[a] - have[2 * a] + 1) for a in (2, 1, 0))
    dst = tuple(slice(lo[a] - extent[2 * a], hi[a] - extent[2 * a] + 1) for a in (2, 1, 0))
    out[dst] = values[src]
    return out



Extent = tuple  # (i0, i1, j0, j1, k0, k1), inclusive, in the volume's IJK grid (VTK's extent order)


def _reference(volume_node, extent: Sequence[int]):
    """An empty ``vtkOrientedImageData`` on the volume's voxel grid over ``extent``."""
    import slicer

    image = slicer.vtkOrientedImageData()
    image.SetExtent(*[int(v) for v in extent])
    image.SetImageToWorldMatrix(_local_ijk_to_ras(volume_node))
    return image


def _shape(extent: Sequence[int]) -> tuple[int, int, int]:
    """(k, j, i) array shape of an extent."""
    return extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1


def volume_extent(volume_node) -> Extent:
    dims = volume_node.GetImageData().GetDimensions()
    return (0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)


@dataclass
class _Layer:
    """One labelmap layer of the segmentation, read in place (no copy of the whole labelmap)."""

    image: object
    labels: dict  # segment ID -> label value in this layer


def _layers(segmentation_node, volume_node) -> Optional[list[_Layer]]:
    """The segmentation's binary-labelmap layers if they are stored on the volume's voxel grid (then regions
    are read straight from their scalars); None when they are not (other grid, or another source
    representation), and callers resample instead."""
    import slicer
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetSourceRepresentationName() != name:
        return None
    grid = vtk_matrix_to_numpy(_local_ijk_to_ras(volume_node))
    layers = []
    for layer in range(segmentation.GetNumberOfLayers()):
        image = segmentation.GetLayerDataObject(layer)
        if image is None:
            continue
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        if not np.allclose(vtk_matrix_to_numpy(matrix), grid, atol=1e-6):
            return None
        labels = {sid: segmentation.GetSegment(sid).GetLabelValue()
                  for sid in segmentation.GetSegmentIDsForLayer(layer)}
        layers.append(_Layer(image, labels))
    return layers


def _resampled(segmentation_node, segment_id: str, volume_node, extent: Sequence[int]) -> np.ndarray:
    """Slow path: the segment as a binary labelmap copied and resampled onto the volume's grid over ``extent``."""
    import slicer

    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, False):
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        raise SegmentWriteError(f"cannot read segment '{name}' as a binary labelmap")
    reference = _reference(volume_node, extent)
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(labelmap, reference):
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True)
        labelmap = resampled
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return _array_of(labelmap, extent) == label


def _segment(segmentation_node, segment_id: str):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise SegmentWriteError(f"'{segmentation_node.GetName()}' has no segment '{segment_id}'")
    return segment


def read_region(segmentation_node, segment_id: str, volume_node, extent: Sequence[int]) -> np.ndarray:
    """The segment over an IJK ``extent`` of the volume's grid as a (k, j, i) bool array."""
    _segment(segmentation_node, segment_id)
    layers = _layers(segmentation_node, volume_node)
    if layers is None:
        return _resampled(segmentation_node, segment_id, volume_node, extent)
    for layer in layers:
        if segment_id in layer.labels:
            return _array_of(layer.image, extent) == layer.labels[segment_id]
    return np.zeros(_shape(extent), bool)


def other_segments_region(segmentation_node, segment_id: str, volume_node, extent: Sequence[int]) -> np.ndarray:
    """Union of every other segment over ``extent`` ((k, j, i) bool): one read per labelmap layer."""
    union = np.zeros(_shape(extent), bool)
    layers = _layers(segmentation_node, volume_node)
    if layers is None:
        segmentation = segmentation_node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            other = segmentation.GetNthSegmentID(index)
            if other != segment_id:
                union |= _resampled(segmentation_node, other, volume_node, extent)
        return union
    for layer in layers:
        labels = [label for sid, label in layer.labels.items() if sid != segment_id]
        if labels:
            values = _array_of(layer.image, extent)
            union |= np.isin(values, labels) if len(labels) > 1 else values == labels[0]
    return union


def read_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry) -> np.ndarray:
    """The segment on this slice as an HxW bool image (the engine's pixel grid)."""
    values = read_region(segmentation_node, segment_id, volume_node, geometry.extent())
    return geometry.orient(np.squeeze(values, axis=2 - geometry.axis))


def other_segments_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry) -> np.ndarray:
    """Union of every other segment on this slice (HxW bool)."""
    values = other_segments_region(segmentation_node, segment_id, volume_node, geometry.extent())
    return geometry.orient(np.squeeze(values, axis=2 - geometry.axis))


def _own_layer(segmentation_node, segment_id: str) -> None:
    """Move the segment to a labelmap layer of its own if it shares one (content unchanged), so merges into
    it cannot reach other segments' voxels. Done once: later writes find it alone."""
    segmentation = segmentation_node.GetSegmentation()
    sharing: list = []  # the std::vector<std::string>& argument is filled in place
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segment_id, sharing, False)
    if sharing:
        segmentation.SeparateSegmentLabelmap(segment_id)


def _bounding_extent(region: np.ndarray, extent: Sequence[int]) -> Optional[Extent]:
    """The extent of the True voxels of a (k, j, i) ``region`` that starts at ``extent``; None if none."""
    where = np.argwhere(region)
    if where.size == 0:
        return None
    lo, hi = where.min(axis=0), where.max(axis=0)  # (k, j, i)
    return (extent[0] + int(lo[2]), extent[0] + int(hi[2]), extent[2] + int(lo[1]), extent[2] + int(hi[1]),
            extent[4] + int(lo[0]), extent[4] + int(hi[0]))


def _crop(values: np.ndarray, extent: Sequence[int], sub: Sequence[int]) -> np.ndarray:
    return values[sub[4] - extent[4]:sub[5] - extent[4] + 1, sub[2] - extent[2]:sub[3] - extent[2] + 1,
                  sub[0] - extent[0]:sub[1] - extent[0] + 1]


def _merge(segmentation_node, segment_id: str, volume_node, extent: Extent, values: np.ndarray, mode: int) -> None:
    """Merge (k, j, i) uint8 ``values`` over ``extent`` into the segment with Slicer's own call."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = _reference(volume_node, extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(values).ravel()
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, mode, list(extent)):
        raise SegmentWriteError(f"writing segment '{segment_id}' of '{segmentation_node.GetName()}' failed")


@dataclass
class RegionEdit:
    """What one write changed, so that undo puts back exactly the voxels it took: the segment's content
    ``before`` and ``after`` over ``extent`` (the bounding box of the changed voxels; None if nothing
    changed)."""

    extent: Optional[Extent]
    before: Optional[np.ndarray]
    after: Optional[np.ndarray]
    changed: int = 0


def write_region(segmentation_node, segment_id: str, volume_node, extent: Sequence[int], values: np.ndarray,
                 protect_other_segments: bool = True) -> RegionEdit:
    """Make the segment over an IJK ``extent`` (a slice, a slab or a whole volume) equal the (k, j, i) bool
    ``values``; voxels outside it are not touched.

    Only the bounding box of the voxels that change is written, through ``SetBinaryLabelmapToSegment`` with
    a ``vtkOrientedImageData`` of that box: voxels to add with MODE_MERGE_MAX, voxels to remove with
    MODE_MERGE_MIN (zero where they go). With ``protect_other_segments`` voxels that other segments hold are
    left out (Segment Editor's "overwrite other segments: none"); the other segments are only read, one read
    of the region per labelmap layer, never copied whole.
    """
    import slicer

    check_same_space(segmentation_node, volume_node)
    extent = tuple(int(v) for v in extent)
    values = np.asarray(values, bool)
    if values.shape != _shape(extent):
        raise SegmentWriteError(f"values are {values.shape}, the region {list(extent)} is {_shape(extent)}")
    full = volume_extent(volume_node)
    if any(extent[2 * a] < full[2 * a] or extent[2 * a + 1] > full[2 * a + 1] for a in range(3)):
        raise SegmentWriteError(f"region {list(extent)} is outside the volume {list(full)}")
    if protect_other_segments:
        values = values & ~other_segments_region(segmentation_node, segment_id, volume_node, extent)
    before = read_region(segmentation_node, segment_id, volume_node, extent)
    changed = before != values
    box = _bounding_extent(changed, extent)
    if box is None:
        return RegionEdit(None, None, None, 0)
    _own_layer(segmentation_node, segment_id)
    label = _segment(segmentation_node, segment_id).GetLabelValue()
    old, new = _crop(before, extent, box), _crop(values, extent, box)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    add, remove = new & ~old, old & ~new
    if add.any():
        _merge(segmentation_node, segment_id, volume_node, box, add.astype(np.uint8) * label, logic.MODE_MERGE_MAX)
    if remove.any():
        _merge(segmentation_node, segment_id, volume_node, box, (~remove).astype(np.uint8) * label,
               logic.MODE_MERGE_MIN)
    return RegionEdit(box, old.copy(), new.copy(), int(add.sum() + remove.sum()))


def restore_region(segmentation_node, segment_id: str, volume_node, edit: RegionEdit) -> None:
    """Undo one ``write_region``: its box gets its ``before`` content back (other segments never changed)."""
    if edit.extent is not None:
        write_region(segmentation_node, segment_id, volume_node, edit.extent, edit.before,
                     protect_other_segments=False)


def _slice_values(geometry: SliceGeometry, mask: np.ndarray) -> np.ndarray:
    """An HxW slice image as the (k, j, i) values over the slice's extent."""
    return np.expand_dims(geometry.to_ijk_plane(np.asarray(mask, bool)), 2 - geometry.axis)


@dataclass
class SliceEdit:
    """One slice write, for undo: the slice (HxW, engine pixels) ``before`` and ``after``."""

    before: np.ndarray
    after: np.ndarray
    changed: int = 0
    region: Optional[RegionEdit] = field(default=None, repr=False)


def write_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry, mask: np.ndarray,
                protect_other_segments: bool = True) -> SliceEdit:
    """Make the segment on this slice equal ``mask`` (HxW bool); returns the edit for undo."""
    mask = np.asarray(mask, bool)
    if mask.shape != geometry.shape:
        raise SegmentWriteError(f"mask is {mask.shape}, the slice is {geometry.shape}")
    extent = geometry.extent()
    before = read_slice(segmentation_node, segment_id, volume_node, geometry)
    region = write_region(segmentation_node, segment_id, volume_node, extent, _slice_values(geometry, mask),
                          protect_other_segments)
    after = read_slice(segmentation_node, segment_id, volume_node, geometry) if region.extent else before
    return SliceEdit(before=before, after=after, changed=region.changed, region=region)


def restore_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry,
                  edit: SliceEdit) -> None:
    """Undo one write: the slice gets its ``before`` content back (other segments were never touched)."""
    write_slice(segmentation_node, segment_id, volume_node, geometry, edit.before, protect_other_segments=False)
