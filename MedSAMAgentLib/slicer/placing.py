"""Slicer's place mode into one of the session's markups nodes, leaving the user's settings as they were.

The interaction node's place-mode persistence is the user's global choice (the toolbar's "persistent"
toggle). Clicks keep it: with persistence on, the clinician places several clicks in a row. A box is one
placement: persistence is switched off for it and switched back on when the placement ends (the interaction
mode leaves Place), so the global setting is what the user had.

Imports nothing: it calls the MRML nodes it is given (runs on slicer-core).
"""

from __future__ import annotations

from typing import Optional


class PlaceMode:
    def __init__(self) -> None:
        self._restore: Optional[tuple] = None  # (interaction node, observer tag)

    def start(self, app_logic, node, single: bool = False) -> None:
        """Enter place mode for ``node`` (a markups node); ``single``: exactly one placement."""
        selection, interaction = app_logic.GetSelectionNode(), app_logic.GetInteractionNode()
        self.stop()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        if single and interaction.GetPlaceModePersistence():
            interaction.SetPlaceModePersistence(0)
            tag = interaction.AddObserver(interaction.InteractionModeChangedEvent, self._mode_changed)
            self._restore = (interaction, tag)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _mode_changed(self, interaction, event=None) -> None:
        if interaction.GetCurrentInteractionMode() != interaction.Place:
            self.stop()

    def stop(self) -> None:
        """Put the user's persistence back (if it was changed) and stop watching."""
        if self._restore is not None:
            interaction, tag = self._restore
            self._restore = None
            interaction.RemoveObserver(tag)
            interaction.SetPlaceModePersistence(1)

    @staticmethod
    def leave(app_logic) -> None:
        """Back to the view-transform mode if the user is still placing (module exit, scene close)."""
        interaction = app_logic.GetInteractionNode()
        if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)
