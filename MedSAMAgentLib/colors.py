"""Colours, in one place: the model's overlay (fixed by the protocol) and the clinician's markers."""

MODEL_MASK_GREEN = (0, 255, 0)  # the policy's observation: mask blended in pure green (AGENT_PROTOCOL.md)
MODEL_MASK_ALPHA = 0.5

# what people see (PNG overlays and Slicer markups); RGB 0..255
MASK = (255, 200, 0)
POSITIVE = (0, 200, 0)
NEGATIVE = (230, 30, 30)
PROPOSAL = (255, 0, 255)  # the agent's pending proposal: distinct from applied clicks
BOX = (0, 160, 255)


def as_float(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """0..1 floats, as Slicer's display nodes take them."""
    return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
