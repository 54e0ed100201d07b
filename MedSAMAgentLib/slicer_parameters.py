"""The module's settings in the scene: a ``vtkMRMLScriptedModuleNode`` parameter node, so they are saved with
the scene and come back when it is reopened.

Same convention as Slicer's ``ScriptedLoadableModuleLogic.getParameterNode`` (singleton tag and
``ModuleName`` attribute = the module name), written against MRML only so it runs on ``slicer-core``, where
``slicer.parameterNodeWrapper`` does not exist. Plain values are parameters (strings); the volume and the
segmentation are node references.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MODULE_NAME = "MedSAMAgent"
VOLUME_ROLE = "InputVolume"
SEGMENTATION_ROLE = "Segmentation"
SLICE_VIEWS = ("Red", "Yellow", "Green")
WINDOWS = ("view", "auto", "abdomen", "liver", "lung", "pelvis", "soft_tissue")


def default_log_folder() -> str:
    return str(Path.home() / "MedSAMAgent" / "trajectories")


@dataclass
class AgentSettings:
    """Everything the panel sets, with the defaults a new scene starts from."""

    segment_id: str = ""
    target: str = ""
    slice_view: str = "Red"
    tool: str = "litemedsam"
    checkpoint: str = ""
    device: str = ""
    policy: str = "builtin"
    max_actions: int = 5
    window: str = "view"
    protect_other_segments: bool = True
    log_enabled: bool = True
    log_folder: str = ""
    autopilot_interval_ms: int = 300

    def resolved_log_folder(self) -> str:
        return self.log_folder or default_log_folder()


def _key(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))  # segment_id -> SegmentId


def _parse(value: str, kind: type) -> Any:
    if kind is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if kind is int:
        return int(float(value))
    return value


def find_or_create_parameter_node(scene):
    """The module's singleton parameter node in ``scene`` (created with defaults if absent)."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is not None:
        return node
    node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    node.UnRegister(None)  # CreateNodeByClass hands over a reference the Python wrapper also holds
    node.SetSingletonTag(MODULE_NAME)
    node.SetAttribute("ModuleName", MODULE_NAME)
    node.SetName(scene.GenerateUniqueName(MODULE_NAME))
    node = scene.AddNode(node)
    write_settings(node, AgentSettings())
    return node


def read_settings(node) -> AgentSettings:
    """Settings from a parameter node; missing or unreadable values fall back to the defaults."""
    settings = AgentSettings()
    hints = {f.name: type(getattr(settings, f.name)) for f in fields(AgentSettings)}
    for name, kind in hints.items():
        raw = node.GetParameter(_key(name))
        if raw:
            try:
                setattr(settings, name, _parse(raw, kind))
            except ValueError:
                pass
    return settings


def write_settings(node, settings: AgentSettings) -> None:
    was = node.StartModify()
    try:
        for f in fields(AgentSettings):
            value = getattr(settings, f.name)
            node.SetParameter(_key(f.name), str(value).lower() if isinstance(value, bool) else str(value))
    finally:
        node.EndModify(was)


def set_nodes(parameter_node, volume_node=None, segmentation_node=None) -> None:
    parameter_node.SetNodeReferenceID(VOLUME_ROLE, volume_node.GetID() if volume_node else None)
    parameter_node.SetNodeReferenceID(SEGMENTATION_ROLE, segmentation_node.GetID() if segmentation_node else None)


def get_nodes(parameter_node) -> tuple:
    return parameter_node.GetNodeReference(VOLUME_ROLE), parameter_node.GetNodeReference(SEGMENTATION_ROLE)
