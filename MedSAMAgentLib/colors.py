"""Colours, in one place: the model's overlay (fixed by the protocol) and the clinician's markers."""

MODEL_MASK_GREEN = (0, 255, 0)  # the policy's observation: mask blended in pure green (AGENT_PROTOCOL.md)

# what people see (PNG overlays and Slicer markups); RGB 0..255
MASK = (0, 210, 255)  # PNG overlays only; in Slicer the segment keeps its own colour
POSITIVE = (26, 217, 51)
NEGATIVE = (242, 38, 38)
PROPOSAL = (255, 166, 0)  # amber: the agent's pending proposal, distinct from applied prompts
BOX = (51, 179, 255)


def as_float(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """0..1 floats, as Slicer's display nodes take them."""
    return tuple(c / 255.0 for c in rgb)  # type: ignore[return-value]
