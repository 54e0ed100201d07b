"""``medsam-agent app``: the human-in-the-loop demo in the browser (Gradio), on the engine the Slicer panel uses.

- ``picture``: what the page shows and segments (a 2D image, or a volume shown slice by slice as Slicer's
  axial view shows it) and how its mask is written back (PNG, or NIfTI with the volume's geometry);
- ``workspace``: one browser session's state and the buttons' actions on ``session.Session``; no Gradio in it;
- ``ui``: the Gradio page that forwards clicks and buttons to a ``Workspace``.

Nothing leaves the machine: the server listens on 127.0.0.1 unless told otherwise, with no share link and
Gradio's analytics off; the page loads only from that server.
"""
