"""The Slicer-facing part of MedSAMAgent: the panel's logic, its MRML bridge and its widget.

Everything here but ``widget`` imports only ``slicer``, ``vtk`` and ``numpy`` (runs on PyPI slicer-core); ``widget``
is the Qt panel and runs inside the Slicer application only.
"""
