"""MedSAMAgent: agentic interactive segmentation for medical images (MedSAM-Agent protocol).

Everything here runs without the Slicer application; ``MedSAMAgentLib.slicer_bridge`` is the only part that
talks to MRML and imports only ``slicer``, ``vtk`` and ``numpy``.
"""

__version__ = "0.1.0"
