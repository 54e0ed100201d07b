"""Names -> tools and policies, for the command line and the Slicer panel.

Each entry imports its backend lazily, so ``medsam-agent --help`` and the built-in path never import the
heavier optional libraries (transformers, segment_anything, sam2).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .tools.base import SegmentationTool, ToolError


def _litemedsam(checkpoint: Optional[str] = None, device: Optional[str] = None, **options: Any) -> SegmentationTool:
    from .tools.litemedsam import LiteMedSAM

    return _with_options(LiteMedSAM, checkpoint, device, options)


def _sam(checkpoint: Optional[str] = None, device: Optional[str] = None, **options: Any) -> SegmentationTool:
    from .tools.sam import SAMTool

    return _with_options(SAMTool, checkpoint, device, options)


def _medsam(checkpoint: Optional[str] = None, device: Optional[str] = None, **options: Any) -> SegmentationTool:
    from .tools.sam import MedSAMTool

    return _with_options(MedSAMTool, checkpoint, device, options)


def _sam2(checkpoint: Optional[str] = None, device: Optional[str] = None, **options: Any) -> SegmentationTool:
    from .tools.sam2_tool import SAM2Tool

    return _with_options(SAM2Tool, checkpoint, device, options)


def _medsam2(checkpoint: Optional[str] = None, device: Optional[str] = None, **options: Any) -> SegmentationTool:
    from .tools.sam2_tool import MedSAM2Tool

    return _with_options(MedSAM2Tool, checkpoint, device, options)


def _with_options(cls, checkpoint, device, options: dict) -> SegmentationTool:
    """Build a tool; an option it does not take is named in a ToolError, not a TypeError."""
    check_options(cls, options)
    return cls(checkpoint=checkpoint, device=device, **options)


def option_names(cls) -> set[str]:
    """The ``--tool-option`` keys a tool class takes: its constructor's keywords besides checkpoint/device."""
    import inspect

    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {name for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind in kinds and name not in ("self", "checkpoint", "device")}


def check_options(cls, options: dict) -> None:
    accepted = option_names(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = f"it takes {', '.join(sorted(accepted))}" if accepted else "it takes none"
        raise ToolError(f"the {cls.name} tool has no option {', '.join(unknown)}; {takes}")


TOOLS: dict[str, Callable[..., SegmentationTool]] = {
    "litemedsam": _litemedsam,
    "sam": _sam,
    "medsam": _medsam,
    "sam2": _sam2,
    "medsam2": _medsam2,
}
DEFAULT_TOOL = "litemedsam"


def parse_tool_options(pairs: Optional[list[str]]) -> dict[str, str]:
    """``["image_size=512", "accept_licence=true"]`` (e.g. repeated ``--tool-option``) -> keyword options;
    each tool converts the text values it takes."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ToolError(f"tool options are KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def make_tool(name: str = DEFAULT_TOOL, checkpoint: Optional[str] = None, device: Optional[str] = None,
              **options: Any) -> SegmentationTool:
    try:
        factory = TOOLS[name]
    except KeyError:
        raise ToolError(f"unknown tool {name!r}; choose one of {', '.join(sorted(TOOLS))}") from None
    from .tools.guard import GuardedTool

    return GuardedTool(factory(checkpoint=checkpoint, device=device, **options))


TOOL_CLASSES = {  # module and class of each tool, for checking options before anything is loaded
    "litemedsam": ("litemedsam", "LiteMedSAM"),
    "sam": ("sam", "SAMTool"),
    "medsam": ("sam", "MedSAMTool"),
    "sam2": ("sam2_tool", "SAM2Tool"),
    "medsam2": ("sam2_tool", "MedSAM2Tool"),
}


def check_tool_options(name: str, options: dict) -> None:
    """``ToolError`` when ``options`` has a key the tool ``name`` does not take (no weights are loaded)."""
    import importlib

    if name not in TOOL_CLASSES:
        raise ToolError(f"unknown tool {name!r}; choose one of {', '.join(sorted(TOOLS))}")
    module, cls = TOOL_CLASSES[name]
    check_options(getattr(importlib.import_module(f".tools.{module}", __package__), cls), options)


def _builtin(**_: Any):
    from .policies.builtin import BuiltinPolicy

    return BuiltinPolicy()


def _learned(weights: Optional[str] = None, **_: Any):
    from .policies.learned import LearnedPolicy

    return LearnedPolicy(weights=weights)


def _oracle(ground_truth=None, seed: int = 0, **options: Any):
    from .policies.oracle import OracleExpert

    if ground_truth is None:
        raise ValueError("the oracle policy reads ground truth: this case has none")
    return OracleExpert(ground_truth, seed=seed, **options)


def _mllm(model: Optional[str] = None, endpoint: Optional[str] = None, model_name: Optional[str] = None,
          api_key: Optional[str] = None, timeout: float = 120.0, device: Optional[str] = None,
          dtype: Optional[str] = None, **_: Any):
    from .policies.mllm import MLLMPolicy

    return MLLMPolicy.from_options(model=model, endpoint=endpoint, model_name=model_name, api_key=api_key,
                                   timeout=timeout, device=device, dtype=dtype)


POLICIES: dict[str, Callable[..., Any]] = {
    "builtin": _builtin,
    "learned": _learned,
    "oracle": _oracle,
    "mllm": _mllm,
}
DEFAULT_POLICY = "builtin"


def make_policy(name: str = DEFAULT_POLICY, **options: Any):
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None
    return factory(**options)
