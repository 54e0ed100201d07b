"""Reading and writing one slice of a segment, touching nothing else.

Writes go through ``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment`` with a
``vtkOrientedImageData`` covering only the changed voxels: voxels to add are merged in with MODE_MERGE_MAX,
voxels to remove with MODE_MERGE_MIN of the inverted region, both limited to that extent, so other slices
keep their content exactly. Segments sharing a labelmap layer are never overwritten: Slicer moves the edited
segment to its own layer where they would overlap. With ``protect_other_segments`` the mask is also kept off
voxels that other segments already hold (Segment Editor's "overwrite other segments: none").

Imports only ``slicer``, ``vtk`` and ``numpy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .slicer_geometry import SliceGeometry, node_to_world, vtk_matrix_to_numpy


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


def _slice_reference(volume_node, geometry: SliceGeometry, extent: list[int]):
    import slicer

    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.SetImageToWorldMatrix(_local_ijk_to_ras(volume_node))
    return image


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


def read_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry) -> np.ndarray:
    """The segment on this slice as an HxW bool image (the engine's pixel grid)."""
    import slicer

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise SegmentWriteError(f"'{segmentation_node.GetName()}' has no segment '{segment_id}'")
    labelmap = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation_node, segment_id, labelmap, False):
        raise SegmentWriteError(f"cannot read segment '{segment.GetName()}' as a binary labelmap")
    extent = geometry.extent()
    reference = _slice_reference(volume_node, geometry, extent)
    if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(labelmap, reference):
        values = _array_of(labelmap, extent)  # same voxel grid: read the slice directly
    else:
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True)
        values = _array_of(resampled, extent)
    # shared labelmap layers hold several segments: this one is the voxels with its label value
    plane = np.squeeze(values == segment.GetLabelValue(), axis=2 - geometry.axis)
    return geometry.orient(plane)


def other_segments_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry) -> np.ndarray:
    """Union of every other segment on this slice (HxW bool)."""
    segmentation = segmentation_node.GetSegmentation()
    union = np.zeros(geometry.shape, bool)
    for index in range(segmentation.GetNumberOfSegments()):
        other = segmentation.GetNthSegmentID(index)
        if other != segment_id:
            union |= read_slice(segmentation_node, other, volume_node, geometry)
    return union


def _write_region(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry, values: np.ndarray,
                  rows: tuple[int, int], cols: tuple[int, int], mode: int) -> None:
    """Merge an HxW window (``values`` for image rows/cols, inclusive) into the segment."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    extent = geometry.extent(rows, cols)
    image = _slice_reference(volume_node, geometry, extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    full = np.zeros(geometry.shape, np.uint8)
    full[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = values
    plane = geometry.to_ijk_plane(full)  # rows/cols of the two remaining (k, j, i) axes, full size
    lo = {0: extent[0], 1: extent[2], 2: extent[4]}
    hi = {0: extent[1], 1: extent[3], 2: extent[5]}
    remaining = [a for a in (2, 1, 0) if a != geometry.axis]
    window = plane[lo[remaining[0]]:hi[remaining[0]] + 1, lo[remaining[1]]:hi[remaining[1]] + 1]
    target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    target[:] = np.expand_dims(window, 2 - geometry.axis).ravel()
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentation_node, segment_id, mode, extent):
        raise SegmentWriteError(f"writing segment '{segment_id}' of '{segmentation_node.GetName()}' failed")


def _own_layer(segmentation_node, segment_id: str) -> None:
    """Move the segment to a labelmap layer of its own if it shares one (content unchanged), so merges into
    it cannot reach other segments' voxels."""
    segmentation = segmentation_node.GetSegmentation()
    sharing: list = []  # the std::vector<std::string>& argument is filled in place
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segment_id, sharing, False)
    if sharing:
        segmentation.SeparateSegmentLabelmap(segment_id)


def _bbox(region: np.ndarray) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return None
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


@dataclass
class SliceEdit:
    """What one write changed, so that undo puts back exactly the voxels it took."""

    before: np.ndarray
    after: np.ndarray
    changed: int = 0


def write_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry, mask: np.ndarray,
                protect_other_segments: bool = True) -> SliceEdit:
    """Make the segment on this slice equal ``mask`` (HxW bool); returns the edit for undo."""
    import slicer

    check_same_space(segmentation_node, volume_node)
    mask = np.asarray(mask, bool)
    if mask.shape != geometry.shape:
        raise SegmentWriteError(f"mask is {mask.shape}, the slice is {geometry.shape}")
    if protect_other_segments:
        mask = mask & ~other_segments_slice(segmentation_node, segment_id, volume_node, geometry)
    _own_layer(segmentation_node, segment_id)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    before = read_slice(segmentation_node, segment_id, volume_node, geometry)
    add, remove = mask & ~before, before & ~mask
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    box = _bbox(add)
    if box is not None:
        (r0, r1), (c0, c1) = box
        values = add[r0:r1 + 1, c0:c1 + 1].astype(np.uint8) * label  # MERGE_MAX writes values as they are
        _write_region(segmentation_node, segment_id, volume_node, geometry, values, (r0, r1), (c0, c1),
                      logic.MODE_MERGE_MAX)
    box = _bbox(remove)
    if box is not None:
        (r0, r1), (c0, c1) = box
        keep = ~remove[r0:r1 + 1, c0:c1 + 1]  # MERGE_MIN: zero where voxels go, one where they stay
        _write_region(segmentation_node, segment_id, volume_node, geometry, keep, (r0, r1), (c0, c1),
                      logic.MODE_MERGE_MIN)
    return SliceEdit(before=before, after=mask, changed=int(add.sum() + remove.sum()))


def restore_slice(segmentation_node, segment_id: str, volume_node, geometry: SliceGeometry,
                  edit: SliceEdit) -> None:
    """Undo one write: the slice gets its ``before`` content back (other segments were never touched)."""
    write_slice(segmentation_node, segment_id, volume_node, geometry, edit.before, protect_other_segments=False)
