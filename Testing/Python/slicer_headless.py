"""A real MRML scene without the Slicer application (PyPI ``slicer-core``), for the bridge tests.

Set up as in docs/SLICER.md: the application logic with its color logic, then the Volumes, Segmentations,
Markups and SubjectHierarchy logics attached to the scene, ``slicer.mrmlScene`` set, and a small stand-in for
``slicer.modules`` so that ``slicer.util`` helpers that look up module logics work. Slice views are real
``vtkMRMLSliceNode``s created through ``vtkMRMLSliceLogic``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np

VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


@dataclass
class HeadlessSlicer:
    scene: object
    app_logic: object
    logics: dict = field(default_factory=dict)
    slice_logics: dict = field(default_factory=dict)

    def slice_node(self, view: str):
        return self.slice_logics[view].GetSliceNode()

    def show(self, view: str, volume_node, ras=None, orientation: str | None = None):
        """Point a view at a volume (its centre, or ``ras``), like selecting it as the background layer."""
        logic = self.slice_logics[view]
        node = logic.GetSliceNode()
        if orientation:
            node.SetOrientation(orientation)
        composite = logic.GetSliceCompositeNode()
        if composite is not None:
            composite.SetBackgroundVolumeID(volume_node.GetID())
        if ras is None:
            bounds = [0.0] * 6
            volume_node.GetRASBounds(bounds)
            ras = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        node.JumpSliceByCentering(*ras)
        return node

    def close(self):
        import slicer

        self.scene.Clear(True)
        if getattr(slicer, "mrmlScene", None) is self.scene:
            slicer.mrmlScene = None


def make_headless_slicer() -> HeadlessSlicer:
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in [("Colors", slicer.vtkSlicerColorLogic), ("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)]:
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    modules = types.SimpleNamespace()
    for name, logic in logics.items():
        setattr(modules, name.lower(), types.SimpleNamespace(logic=lambda logic=logic: logic))
    slicer.modules = modules
    slice_logics = {}
    for view, orientation in VIEWS.items():
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        node = logic.AddSliceNode(view)
        node.SetOrientation(orientation)
        slice_logics[view] = logic
    return HeadlessSlicer(scene, app, logics, slice_logics)


def volume_from_array(array_kji: np.ndarray, name: str, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                      directions=np.eye(3)):
    """A scalar volume node from a (k, j, i) array with the given geometry (``directions`` columns = I, J, K
    in RAS)."""
    import slicer
    import vtk

    node = slicer.util.addVolumeFromArray(np.ascontiguousarray(array_kji), name=name)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions[r][c]))
    node.SetIJKToRASDirectionMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def load_volume(path, name: str):
    """Read a volume file through SimpleITK into a node with the file's geometry (LPS -> RAS)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    directions = lps_to_ras @ np.array(image.GetDirection()).reshape(3, 3)
    origin = lps_to_ras @ np.array(image.GetOrigin())
    node = volume_from_array(array, name, image.GetSpacing(), origin, directions)
    return node, array
