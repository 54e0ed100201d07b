"""MedSAMAgent: agentic interactive segmentation for medical images (MedSAM-Agent protocol).

Everything here runs without the Slicer application; the ``slicer_*`` modules are the only part that talks to
MRML, and they import only ``slicer``, ``vtk`` and ``numpy`` (so they run on ``slicer-core``).
"""

__version__ = "0.1.0"
