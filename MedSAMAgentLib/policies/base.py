"""The policy interface: given what the agent sees, propose one action with a one-line reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from ..actions import Action
from ..tools.base import Prediction


class PolicyError(RuntimeError):
    """The policy could not produce an action (unparsable answer after a retry, server down, ...).

    The session pauses for the clinician instead of crashing; the message says what went wrong.
    """


@dataclass(frozen=True)
class Proposal:
    action: Action
    reason: str
    policy: str
    raw_text: Optional[str] = None  # the model's own words, for policies that speak (MLLM)


@dataclass
class Observation:
    """What a policy may look at before proposing.

    ``preview`` runs the tool on the current state plus one more action without committing it, for
    policies that check an action before proposing it (the oracle's progress constraint); with
    ``whole_view=True`` a search's candidate box is not zoomed (tools/zoom.py).
    """

    image: np.ndarray  # HxWx3 uint8, the engine's 2D image
    target: str
    actions: Sequence[Action]  # box/point actions applied so far, oldest first
    prediction: Optional[Prediction]  # current mask state (None before the first action)
    preview: Callable[..., Prediction]  # (action, whole_view=False) -> Prediction
    masks: Sequence[np.ndarray] = field(default_factory=list)  # mask after each applied action
    max_actions: int = 5


@runtime_checkable
class Policy(Protocol):
    name: str
    version: str
    needs_hint: bool  # True when the policy cannot start without a clinician's click or box

    def reset(self) -> None:
        """Forget any per-episode state (called when a session starts)."""

    def propose(self, observation: Observation) -> Proposal:
        """The next action; raises ``PolicyError`` when it cannot produce one."""
