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
# How a volume becomes the model's image: ONE mapping per volume (``images.normalise_volume``), never the view's
# display window. "auto": a CT window for CT-like volumes (soft tissue), else one percentile range;
# "percentiles": the 0.5-99.5 percentile range of the volume's non-zero voxels; or a named CT window.
WINDOWS = ("auto", "percentiles", "abdomen", "liver", "lung", "pelvis", "soft_tissue")
# The panel offers the policies that can run without ground truth (``oracle`` reads it: evaluation only).
PANEL_POLICIES = ("builtin", "learned", "mllm")
# Tools and the Python module each needs beyond the built-in one (SAM-family tools also need a checkpoint).
TOOL_MODULES = {"litemedsam": None, "sam": "segment_anything", "medsam": "segment_anything", "sam2": "sam2",
                "medsam2": "sam2"}


def available_tools() -> list[str]:
    """Tools whose packages are installed (LiteMedSAM always: its packages are installed on first Start)."""
    import importlib.util

    return [name for name, module in TOOL_MODULES.items()
            if module is None or importlib.util.find_spec(module) is not None]


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
    mllm_model: str = ""  # a local model folder for the MLLM policy ...
    mllm_endpoint: str = ""  # ... or an OpenAI-compatible endpoint URL with a model name
    mllm_model_name: str = ""
    max_actions: int = 5
    window: str = "auto"
    protect_other_segments: bool = True
    log_enabled: bool = False  # opt-in: logs hold slice images, file paths and DICOM UIDs
    log_folder: str = ""
    autopilot_interval_ms: int = 300

    def resolved_log_folder(self) -> str:
        return self.log_folder or default_log_folder()

    def policy_options(self) -> dict:
        """Keyword options for ``registry.make_policy`` from the panel's fields; a missing one is named."""
        if self.policy != "mllm":
            return {}
        if self.mllm_model:
            return {"model": self.mllm_model}
        if self.mllm_endpoint and self.mllm_model_name:
            return {"endpoint": self.mllm_endpoint, "model_name": self.mllm_model_name}
        raise ValueError("the MLLM policy needs a model folder, or an endpoint URL and a model name: fill them "
                         "in under Agent")


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
