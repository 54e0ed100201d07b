"""Which 2D slice a Slicer view shows, and the exact pixel <-> IJK <-> RAS mapping for it.

Imports only ``slicer``, ``vtk`` and ``numpy`` (plus the package's pure modules), so it runs on PyPI's
``slicer-core`` as well as inside the Slicer application.

How a view is turned into the engine's 2D image:
- The slice plane comes from the slice node itself (``GetSliceToRAS``: columns are the view's right, up and
  normal directions, the fourth column the plane's centre), never from an assumption that Red is axial.
- The volume's voxel axis most aligned with the view normal is the slice axis; the slice index is the voxel
  plane nearest the view's centre (through the volume's IJK-to-RAS matrix and its parent transform).
- The other two voxel axes become image columns (the one most aligned with the view's right) and rows (most
  aligned with the view's down), flipped where needed, so the image looks as the clinician sees it.
- Oblique views: the engine works on the volume's own voxel plane nearest the view, not a resampled
  reformat, so the mask is written to voxels exactly and results do not depend on which view was clicked;
  ``obliquity_deg`` (angle between the view normal and that voxel axis) is logged, and markups sit on voxel
  centres, which in an oblique view may lie up to half a voxel off the displayed plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..actions import Action, Box, Point, Stop
from ..images import CT_WINDOWS, normalise_volume, take_slice, to_rgb

IJK_AXIS_NAMES = ("I", "J", "K")


class SliceGeometryError(ValueError):
    """The view and the volume cannot be matched (view outside the volume, non-linear transform, ...)."""


def vtk_matrix_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def node_to_world(node) -> np.ndarray:
    """The node's parent transform to world as a 4x4 matrix; identity when it has none."""
    import vtk

    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise SliceGeometryError(
            f"'{node.GetName()}' is under a non-linear transform ('{transform_node.GetName()}'): harden the "
            "transform (Data module, right-click > Harden transform) before segmenting it")
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return vtk_matrix_to_numpy(matrix)


def ijk_to_world(volume_node) -> np.ndarray:
    """IJK -> world RAS for a volume node: its IJK-to-RAS matrix, then its parent transform."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return node_to_world(volume_node) @ vtk_matrix_to_numpy(matrix)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass(frozen=True)
class SliceGeometry:
    """One voxel slice of a volume as a 2D image: pixel (x = column, y = row) <-> IJK <-> world RAS."""

    dims: tuple[int, int, int]  # volume size along I, J, K
    axis: int  # IJK axis normal to the slice (0 = I, 1 = J, 2 = K)
    index: int  # voxel index along ``axis``
    col_axis: int  # IJK axis that runs along image columns (x)
    row_axis: int  # IJK axis that runs along image rows (y)
    col_flip: bool  # x = dims[col_axis] - 1 - i when True
    row_flip: bool
    ijk_to_ras: np.ndarray  # 4x4, world RAS (parent transform included)
    orientation: str = ""  # the view's orientation name (Axial, Sagittal, Coronal, Reformat, ...)
    view: str = ""  # the view's name (Red, Yellow, Green, ...)
    obliquity_deg: float = 0.0  # angle between the view normal and the slice axis in RAS

    # -- sizes --------------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.dims[self.col_axis])

    @property
    def height(self) -> int:
        return int(self.dims[self.row_axis])

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def pixel_to_ijk(self) -> np.ndarray:
        """4x4 matrix taking (x, y, 0, 1) to (i, j, k, 1)."""
        matrix = np.zeros((4, 4))
        matrix[self.col_axis, 0] = -1.0 if self.col_flip else 1.0
        matrix[self.col_axis, 3] = self.width - 1 if self.col_flip else 0.0
        matrix[self.row_axis, 1] = -1.0 if self.row_flip else 1.0
        matrix[self.row_axis, 3] = self.height - 1 if self.row_flip else 0.0
        matrix[self.axis, 3] = self.index
        matrix[3, 3] = 1.0
        return matrix

    @property
    def spacing(self) -> tuple[float, float, float]:
        """World length of one voxel step along image x, image y and the slice normal."""
        lengths = np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)
        return float(lengths[self.col_axis]), float(lengths[self.row_axis]), float(lengths[self.axis])

    # -- points -------------------------------------------------------------------------------------------
    def pixel_to_ijk_point(self, x: float, y: float) -> np.ndarray:
        return (self.pixel_to_ijk @ np.array([x, y, 0.0, 1.0]))[:3]

    def ijk_to_pixel_point(self, ijk: Sequence[float]) -> tuple[float, float]:
        """In-plane coordinates of a (possibly off-slice) IJK point: the normal component is dropped."""
        i = np.asarray(ijk, float)
        x = i[self.col_axis]
        y = i[self.row_axis]
        if self.col_flip:
            x = self.width - 1 - x
        if self.row_flip:
            y = self.height - 1 - y
        return float(x), float(y)

    def ijk_to_ras_point(self, ijk: Sequence[float]) -> np.ndarray:
        return (self.ijk_to_ras @ np.append(np.asarray(ijk, float), 1.0))[:3]

    def ras_to_ijk_point(self, ras: Sequence[float]) -> np.ndarray:
        return (np.linalg.inv(self.ijk_to_ras) @ np.append(np.asarray(ras, float), 1.0))[:3]

    def pixel_to_ras_point(self, x: float, y: float) -> np.ndarray:
        return self.ijk_to_ras_point(self.pixel_to_ijk_point(x, y))

    def ras_to_pixel_point(self, ras: Sequence[float]) -> tuple[float, float]:
        return self.ijk_to_pixel_point(self.ras_to_ijk_point(ras))

    def distance_from_slice(self, ras: Sequence[float]) -> float:
        """Distance in voxels between a RAS point and this slice, along the slice axis."""
        return abs(float(self.ras_to_ijk_point(ras)[self.axis]) - self.index)

    def in_plane_directions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit RAS vectors of image +x, image +y and the slice normal (+x cross +y)."""
        m = self.ijk_to_ras[:3, :3] @ self.pixel_to_ijk[:3, :3]
        dx, dy = _unit(m[:, 0]), _unit(m[:, 1])
        return dx, dy, _unit(np.cross(dx, dy))

    # -- images -------------------------------------------------------------------------------------------
    def extract(self, array_kji: np.ndarray) -> np.ndarray:
        """The 2D image (rows = y, columns = x) of this slice from a (k, j, i) array."""
        image, _ = take_slice(array_kji, 2 - self.axis, self.index)
        return self.orient(image)

    def orient(self, plane: np.ndarray) -> np.ndarray:
        """A slice in array order (the two remaining (k, j, i) axes, as ``take_slice`` gives it) as the 2D
        image: rows along the view's down, columns along its right."""
        image = plane
        remaining = [a for a in (2, 1, 0) if a != self.axis]  # IJK axes of the 2D array's rows, columns
        if remaining[0] != self.row_axis:
            image = image.T
        if self.row_flip:
            image = image[::-1]
        if self.col_flip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def to_ijk_plane(self, image: np.ndarray) -> np.ndarray:
        """Inverse of ``extract``: a 2D image back to the slice's array order (the two remaining (k, j, i)
        axes in decreasing IJK order)."""
        if image.shape != self.shape:
            raise ValueError(f"image is {image.shape}, the slice is {self.shape}")
        if self.col_flip:
            image = image[:, ::-1]
        if self.row_flip:
            image = image[::-1]
        remaining = [a for a in (2, 1, 0) if a != self.axis]
        if remaining[0] != self.row_axis:
            image = image.T
        return np.ascontiguousarray(image)

    def extent(self, rows: Optional[tuple[int, int]] = None, cols: Optional[tuple[int, int]] = None) -> list[int]:
        """VTK extent (i0, i1, j0, j1, k0, k1) of the slice, or of the pixel window rows x cols (inclusive)."""
        rows = rows or (0, self.height - 1)
        cols = cols or (0, self.width - 1)
        corners = np.array([self.pixel_to_ijk_point(x, y) for x in cols for y in rows])
        lo, hi = np.rint(corners.min(axis=0)).astype(int), np.rint(corners.max(axis=0)).astype(int)
        return [int(v) for pair in zip(lo, hi) for v in pair]

    # -- actions ------------------------------------------------------------------------------------------
    def action_coordinates(self, action: Optional[Action]) -> Optional[dict]:
        """IJK and RAS of an action's points, for the trajectory log (box: its two corners)."""
        if action is None or isinstance(action, Stop):
            return None if action is None else {"type": "stop"}
        if isinstance(action, Point):
            ijk = self.pixel_to_ijk_point(action.x, action.y)
            return {"type": "point", "label": action.label, "ijk": _rounded(ijk),
                    "ras": _rounded(self.ijk_to_ras_point(ijk), 4)}
        corners = [(action.x1, action.y1), (action.x2, action.y2)]
        ijk = [self.pixel_to_ijk_point(x, y) for x, y in corners]
        return {"type": "box", "ijk": [_rounded(p) for p in ijk],
                "ras": [_rounded(self.ijk_to_ras_point(p), 4) for p in ijk]}

    def describe(self) -> dict:
        """What the log records about the slice."""
        return {
            "view": self.view,
            "orientation": self.orientation,
            "axis": IJK_AXIS_NAMES[self.axis],
            "index": self.index,
            "columns_axis": ("-" if self.col_flip else "+") + IJK_AXIS_NAMES[self.col_axis],
            "rows_axis": ("-" if self.row_flip else "+") + IJK_AXIS_NAMES[self.row_axis],
            "shape": list(self.shape),
            "obliquity_deg": round(self.obliquity_deg, 3),
            "ijk_to_ras": np.round(self.ijk_to_ras, 6).tolist(),
        }


def _rounded(values: np.ndarray, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def slice_geometry(volume_node, slice_node) -> SliceGeometry:
    """The voxel slice of ``volume_node`` that ``slice_node`` shows (see the module docstring)."""
    image_data = volume_node.GetImageData() if volume_node is not None else None
    if image_data is None:
        raise SliceGeometryError("the input volume has no image data")
    return plane_geometry(
        tuple(int(d) for d in image_data.GetDimensions()), ijk_to_world(volume_node),
        vtk_matrix_to_numpy(slice_node.GetSliceToRAS()), orientation=slice_node.GetOrientationString() or "",
        view=slice_node.GetName() or "", volume_name=volume_node.GetName())


def plane_geometry(dims: tuple[int, int, int], ijk_to_ras: np.ndarray, slice_to_ras: np.ndarray, *,
                   orientation: str = "", view: str = "", volume_name: str = "volume") -> SliceGeometry:
    """The voxel slice a view with this SliceToRAS matrix shows (pure numpy: the browser app uses it to show
    volumes as Slicer's views do)."""
    right, up, normal = (_unit(slice_to_ras[:3, c]) for c in range(3))
    centre = slice_to_ras[:3, 3]
    directions = [_unit(ijk_to_ras[:3, a]) for a in range(3)]
    alignment = [abs(float(np.dot(d, normal))) for d in directions]
    axis = int(np.argmax(alignment))
    obliquity = float(np.degrees(np.arccos(np.clip(alignment[axis], 0.0, 1.0))))
    centre_ijk = (np.linalg.inv(ijk_to_ras) @ np.append(centre, 1.0))[:3]
    index = int(np.floor(centre_ijk[axis] + 0.5))
    if not 0 <= index < dims[axis]:
        raise SliceGeometryError(
            f"the {view} view shows {IJK_AXIS_NAMES[axis]}={centre_ijk[axis]:.1f}, outside the "
            f"volume '{volume_name}' (0..{dims[axis] - 1}): scroll the view into the volume")
    others = [a for a in range(3) if a != axis]
    right_alignment = [abs(float(np.dot(directions[a], right))) for a in others]
    col_axis = others[int(np.argmax(right_alignment))]
    row_axis = others[1 - int(np.argmax(right_alignment))]
    col_flip = float(np.dot(directions[col_axis], right)) < 0
    row_flip = float(np.dot(directions[row_axis], -up)) < 0
    return SliceGeometry(
        dims=dims, axis=axis, index=index, col_axis=col_axis, row_axis=row_axis, col_flip=col_flip,
        row_flip=row_flip, ijk_to_ras=ijk_to_ras, orientation=orientation, view=view, obliquity_deg=obliquity,
    )


# -- intensities --------------------------------------------------------------------------------------------
CT_LIKE_HU = (-500.0, 300.0)  # a volume whose intensities reach below air-ish and above soft tissue is CT


def looks_like_ct(array: np.ndarray) -> bool:
    """Hounsfield-like intensities (air near -1000, bone above 300): the "auto" intensity choice's test."""
    if not np.issubdtype(array.dtype, np.number) or array.size == 0:
        return False
    sample = array[::4, ::4, ::4] if array.ndim == 3 else array
    return float(sample.min()) <= CT_LIKE_HU[0] and float(sample.max()) >= CT_LIKE_HU[1]


def model_volume(array: np.ndarray, window: str = "auto") -> np.ndarray:
    """The whole volume as the model sees it (uint8, (k, j, i)): one mapping for every slice, whatever the
    views' display window/level (which changes what the model sees and so the result). ``window``: "auto"
    (a soft-tissue CT window for CT-like volumes, else percentiles), "percentiles", or a CT window name.
    The mapping itself is ``images.normalise_volume``, shared with the engine's volume sessions."""
    if array.ndim != 3:
        raise SliceGeometryError(f"the volume is not a scalar volume (array {array.shape})")
    if window == "percentiles":
        return normalise_volume(array)
    if window in ("auto", ""):
        return normalise_volume(array, modality="CT") if looks_like_ct(array) else normalise_volume(array)
    if window not in CT_WINDOWS:
        raise SliceGeometryError(f"unknown intensity window {window!r}; choose auto, percentiles or one of "
                                 f"{', '.join(CT_WINDOWS)}")
    return normalise_volume(array, window=window)


def engine_image(model_volume_kji: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """The engine's HxWx3 uint8 image of the slice, from ``model_volume``'s output."""
    return to_rgb(geometry.extract(model_volume_kji))
