"""Promptable segmentation tools behind one small interface (``base.SegmentationTool``)."""

from .base import Prediction, SegmentationTool, ToolError

__all__ = ["Prediction", "SegmentationTool", "ToolError"]
