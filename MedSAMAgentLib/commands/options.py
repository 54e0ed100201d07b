"""Argument types that check ranges while the command line is parsed, so a nonsense option is refused in one
line before any image is read or any model is loaded (``argparse`` prints ``error: argument --x: ...``)."""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional


def whole(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """A whole number in ``low..high`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"{low} or more" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {value}")
        return value

    return parse


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
           ) -> Callable[[str], float]:
    """A finite number in the interval from ``low`` to ``high`` (each end closed unless ``*_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not math.isfinite(value) or below or above:
            left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
            raise argparse.ArgumentTypeError(f"expected a number in {left}{low:g}, {high:g}{right}, got {text}")
        return value

    return parse


POSITIVE = whole(1)
FRACTION = number(0.0, 1.0)  # IoU, Dice, fractions of a box
OPEN_FRACTION = number(0.0, 1.0, low_open=True, high_open=True)  # strictly between 0 and 1


def output_file(*suffixes: str) -> Callable[[str], str]:
    """A file path ending in one of ``suffixes`` (checked before the run, not after it)."""

    def parse(text: str) -> str:
        if not text.lower().endswith(suffixes):
            raise argparse.ArgumentTypeError(f"expected a file name ending in {' or '.join(suffixes)}, got {text!r}")
        return text

    return parse
