"""The MedSAM-Agent policy: a released Qwen3-VL checkpoint (MedSAM-Agent-Qwen3-VL-8B-MedSAM2 / -IMISNet) run
unchanged, in process or through a served endpoint.

Each proposal shows the model the conversation of ``mllm_prompt.build_messages`` and parses the first
``<tool_call>`` of its answer with ``toolcall.parse_tool_call`` (0..999 through the letterbox back to pixels).
An unparsable answer is asked for once more; then, like a server that is down, the policy raises
``PolicyError`` and the session pauses for the clinician.

``add_policy_arguments`` / ``policy_options_from_args`` give every command the same flags:
``--policy mllm --model DIR`` or ``--policy mllm --endpoint URL [--model-name NAME]``.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from ..actions import Action, describe
from ..geometry import Letterbox
from ..toolcall import ToolCallError, parse_tool_call
from .base import Observation, PolicyError, Proposal
from .mllm_backends import BackendError, EndpointBackend, TransformersBackend
from .mllm_prompt import HISTORY_TURNS, build_messages

DEFAULT_TIMEOUT = 120.0  # seconds per request to a served endpoint


class TextBackend(Protocol):
    label: str

    def generate(self, messages: Sequence[dict]) -> str: ...


@dataclass(frozen=True)
class TrainedTool:
    """The segmentation tool a released checkpoint was trained with, and the registry tool to pair it with."""

    label: str  # as the release names it
    tool: str  # registry name to recommend


_KNOWN_TOOLS = (("medsam2", TrainedTool("MedSAM2", "medsam2")), ("imis", TrainedTool("IMIS-Net", "sam")))


def trained_tool_from_names(*names: Optional[str]) -> Optional[TrainedTool]:
    """Infer the training tool from a checkpoint's directory name, config name or served model name."""
    for name in names:
        key = re.sub(r"[^a-z0-9]", "", str(name or "").lower())
        for needle, tool in _KNOWN_TOOLS:
            if needle in key:
                return tool
    return None


class MLLMPolicy:
    """``Policy`` over a Qwen3-VL MedSAM-Agent checkpoint; ``backend`` supplies the model's text."""

    name = "mllm"
    needs_hint = False

    def __init__(self, backend: TextBackend, *, retries: int = 1, history_turns: int = HISTORY_TURNS,
                 trained_tool: Optional[TrainedTool] = None):
        self.backend = backend
        self.retries = retries
        self.history_turns = history_turns
        self._trained_tool = trained_tool
        self._answers: dict[int, tuple[Action, str]] = {}  # turn -> (action parsed, model text)
        self.last_messages: list[dict] = []  # the conversation of the latest proposal (for display and tests)

    @classmethod
    def from_options(cls, model: Optional[str] = None, endpoint: Optional[str] = None,
                     model_name: Optional[str] = None, api_key: Optional[str] = None,
                     timeout: float = DEFAULT_TIMEOUT, device: Optional[str] = None, dtype: Optional[str] = None,
                     **_: Any) -> "MLLMPolicy":
        """The registry's entry: exactly one of ``model`` (a local checkpoint) or ``endpoint`` (a server)."""
        if bool(model) == bool(endpoint):
            raise PolicyError("the mllm policy needs a local checkpoint (--model DIR) or a served model "
                              "(--endpoint URL --model-name NAME), exactly one of them")
        if model:
            backend: TextBackend = TransformersBackend(model, device=device, dtype=dtype)
            config = backend.config  # type: ignore[attr-defined]
            tool = trained_tool_from_names(Path(model).expanduser().resolve().name, config.get("_name_or_path"),
                                           config.get("name_or_path"))
        else:
            backend = EndpointBackend(endpoint, model_name=model_name, api_key=api_key, timeout=timeout)
            tool = trained_tool_from_names(model_name)
        return cls(backend, trained_tool=tool)

    # -- Policy -------------------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return f"qwen3-vl:{self.backend.label}"

    @property
    def trained_tool(self) -> Optional[TrainedTool]:
        """The tool the checkpoint was trained with, when its name says (None for an unknown fine-tune)."""
        return self._trained_tool or trained_tool_from_names(self.backend.label)

    def tool_advice(self, tool_name: str) -> Optional[str]:
        """A one-line warning when ``tool_name`` is not the tool the checkpoint was trained with."""
        trained = self.trained_tool
        if trained is None or trained.tool == tool_name:
            return None
        return (f"{self.backend.label} was trained with {trained.label}; the {tool_name!r} tool may behave "
                f"differently (use --tool {trained.tool} for the released setting)")

    def reset(self) -> None:
        self._answers.clear()
        self.last_messages = []

    def propose(self, observation: Observation) -> Proposal:
        if not observation.target.strip():
            raise PolicyError("the MLLM policy needs a target description (e.g. 'liver in abdominal CT'); "
                              "none was given")
        actions = list(observation.actions)
        masks = masks_per_action(observation)
        texts = [self._own_text(k, action) for k, action in enumerate(actions)]
        messages = build_messages(observation.image, observation.target, actions, masks, texts,
                                  history_turns=self.history_turns)
        self.last_messages = messages
        letterbox = Letterbox(*observation.image.shape[:2])
        problems = []
        for _attempt in range(1 + self.retries):
            try:
                text = self.backend.generate(messages)
            except BackendError:
                raise
            except Exception as error:  # a backend must never crash the session
                raise PolicyError(f"the policy model failed: {type(error).__name__}: {error}") from None
            try:
                action = parse_tool_call(text, letterbox)
            except ToolCallError as error:
                problems.append(str(error))
                continue
            self._answers[len(actions)] = (action, text)
            return Proposal(action, f"{describe(action)} (MedSAM-Agent {self.backend.label})", self.name,
                            raw_text=text)
        raise PolicyError(f"the model gave no usable tool call in {len(problems)} attempt(s): {problems[-1]}")

    def _own_text(self, turn: int, applied: Action) -> Optional[str]:
        """The model's answer for ``turn`` if the applied action is the one it proposed, else None (the
        conversation then shows the applied action's tool-call text)."""
        answer = self._answers.get(turn)
        return answer[1] if answer is not None and answer[0] == applied else None


def masks_per_action(observation: Observation) -> list[np.ndarray]:
    """The mask after each applied action, checked to line up with the actions."""
    masks = list(observation.masks)
    count = len(observation.actions)
    if len(masks) == count:
        return masks
    raise PolicyError(f"the session gave {len(masks)} masks for {count} actions; cannot show the model its history")


# -- command-line flags -------------------------------------------------------------------------------------
def add_policy_arguments(parser: argparse.ArgumentParser, *, policy_flag: bool = True,
                         default_policy: str = "builtin") -> None:
    """``--policy`` and the MLLM policy's flags, the same for every command."""
    from ..commands.options import number

    if policy_flag:
        from ..registry import POLICIES

        parser.add_argument("--policy", default=default_policy, choices=sorted(POLICIES),
                            help=f"who proposes actions (default: {default_policy})")
    group = parser.add_argument_group("MLLM policy (--policy mllm)")
    group.add_argument("--model", metavar="DIR", help="local Qwen3-VL checkpoint directory, e.g. "
                       "MedSAM-Agent-Qwen3-VL-8B-MedSAM2 (BF16, about 17 GB; a GPU is strongly advised)")
    group.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible server (vLLM, SGLang) serving the "
                       "checkpoint, e.g. http://127.0.0.1:8000/v1")
    group.add_argument("--model-name", metavar="NAME", help="served model name (default: the only one listed)")
    group.add_argument("--api-key", metavar="KEY", default=None,
                       help="API key for the endpoint (default: $MEDSAM_AGENT_API_KEY or $OPENAI_API_KEY)")
    group.add_argument("--timeout", metavar="SECONDS", type=number(0.0, low_open=True), default=DEFAULT_TIMEOUT,
                       help=f"seconds for each endpoint answer, connecting and the whole response included "
                       f"(default {DEFAULT_TIMEOUT:g})")
    group.add_argument("--policy-device", metavar="DEVICE", default=None,
                       help="device for a local checkpoint: cuda, cuda:1, cpu (default: cuda when available)")


def policy_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``registry.make_policy(args.policy, **options)``; raises ValueError on a bad combination."""
    model, endpoint = getattr(args, "model", None), getattr(args, "endpoint", None)
    if getattr(args, "policy", None) != "mllm":
        if model or endpoint:
            raise ValueError("--model and --endpoint belong to --policy mllm")
        return {}
    if bool(model) == bool(endpoint):
        raise ValueError("--policy mllm needs --model DIR (a local checkpoint) or --endpoint URL (a served "
                         "model), exactly one of them")
    if model:
        options: dict[str, Any] = {"model": model}
        if getattr(args, "policy_device", None):
            options["device"] = args.policy_device
        return options
    api_key = getattr(args, "api_key", None) or os.environ.get("MEDSAM_AGENT_API_KEY") or os.environ.get(
        "OPENAI_API_KEY")
    return {"endpoint": endpoint, "model_name": getattr(args, "model_name", None), "api_key": api_key,
            "timeout": getattr(args, "timeout", DEFAULT_TIMEOUT)}


def describe_policy(policy: MLLMPolicy) -> str:
    """One line for the user: which model, and which tool it was trained with."""
    trained = policy.trained_tool
    tool = f"trained with {trained.label} (use --tool {trained.tool})" if trained else "training tool unknown"
    return f"MedSAM-Agent policy {policy.backend.label}: {tool}"


__all__ = ["MLLMPolicy", "TrainedTool", "add_policy_arguments", "describe_policy", "masks_per_action",
           "policy_options_from_args", "trained_tool_from_names"]
