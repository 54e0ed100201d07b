"""Weights for the SAM-family tools: what is known about the released checkpoints, where a user keeps them,
and the checks a file must pass before a network is built from it.

Nothing here downloads anything: the ``source`` of each known checkpoint is text for the user to read. A
checkpoint is found from (in order) the path the user gives, a known name or file name looked up in the
cache folder, or the first known file of the tool's family present in the cache folder. The cache folder is
``$MEDSAM_AGENT_CACHE`` when set, else ``$XDG_CACHE_HOME/medsam-agent``, else ``~/.cache/medsam-agent``
(``%LOCALAPPDATA%\\medsam-agent`` on Windows): outside the install tree, so upgrades keep the weights.

SHA-256 values are listed only where they were verified; unverified ones are None (the file is then checked
by loading it, never against a guessed hash).
"""

from __future__ import annotations

import logging
import os
import warnings
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .base import ToolError

log = logging.getLogger(__name__)

CACHE_ENV = "MEDSAM_AGENT_CACHE"
ACCEPT_ENV = "MEDSAM_AGENT_ACCEPT_LICENCE"  # set to 1 to acknowledge the licence notices (same as the option)


@dataclass(frozen=True)
class KnownCheckpoint:
    """One released checkpoint. ``arch`` names the network (SAM: vit_b/vit_l/vit_h; SAM2: the packaged
    config); ``permissive`` is True only where the weights' licence was verified as permissive."""

    name: str
    family: str  # "sam" | "medsam" | "sam2" | "medsam2": the tool that runs it
    file_name: str
    arch: str
    licence: str
    source: str  # where a user gets it (text only; never fetched)
    sha256: Optional[str] = None
    permissive: Optional[bool] = None
    notes: str = ""


_SAM_LICENCE = "Apache-2.0 (segment-anything: code and model)"
_SAM2_LICENCE = "Apache-2.0 (sam2: code and checkpoints)"
_MEDSAM_LICENCE = ("code Apache-2.0 (bowang-lab/MedSAM); the weights' own terms are not verified here and the "
                   "training data include sets with research-only terms: check before clinical or commercial use")
_MEDSAM2_LICENCE = ("code Apache-2.0 (bowang-lab/MedSAM2, a fork of sam2); the weights' own terms are not "
                    "verified here and the training data include sets with research-only terms: check before "
                    "clinical or commercial use")

KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint("sam_vit_b", "sam", "sam_vit_b_01ec64.pth", "vit_b", _SAM_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", permissive=True),
    KnownCheckpoint("sam_vit_l", "sam", "sam_vit_l_0b3195.pth", "vit_l", _SAM_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", permissive=True),
    KnownCheckpoint("sam_vit_h", "sam", "sam_vit_h_4b8939.pth", "vit_h", _SAM_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", permissive=True),
    KnownCheckpoint("medsam_vit_b", "medsam", "medsam_vit_b.pth", "vit_b", _MEDSAM_LICENCE,
                    "the MedSAM README (github.com/bowang-lab/MedSAM): a Google Drive folder", permissive=None,
                    notes="box prompts; 1024x1024 input, min-max normalised, no ImageNet mean/std"),
    KnownCheckpoint("sam2.1_hiera_tiny", "sam2", "sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml",
                    _SAM2_LICENCE, "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
                    permissive=True),
    KnownCheckpoint("sam2.1_hiera_small", "sam2", "sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml",
                    _SAM2_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
                    permissive=True),
    KnownCheckpoint("sam2.1_hiera_base_plus", "sam2", "sam2.1_hiera_base_plus.pt",
                    "configs/sam2.1/sam2.1_hiera_b+.yaml", _SAM2_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
                    permissive=True, notes="one of the tools of the MedSAM-Agent release"),
    KnownCheckpoint("sam2.1_hiera_large", "sam2", "sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml",
                    _SAM2_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
                    permissive=True),
    KnownCheckpoint("sam2_hiera_tiny", "sam2", "sam2_hiera_tiny.pt", "configs/sam2/sam2_hiera_t.yaml",
                    _SAM2_LICENCE, "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt",
                    permissive=True),
    KnownCheckpoint("sam2_hiera_small", "sam2", "sam2_hiera_small.pt", "configs/sam2/sam2_hiera_s.yaml",
                    _SAM2_LICENCE, "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt",
                    permissive=True),
    KnownCheckpoint("sam2_hiera_base_plus", "sam2", "sam2_hiera_base_plus.pt", "configs/sam2/sam2_hiera_b+.yaml",
                    _SAM2_LICENCE,
                    "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt",
                    permissive=True),
    KnownCheckpoint("sam2_hiera_large", "sam2", "sam2_hiera_large.pt", "configs/sam2/sam2_hiera_l.yaml",
                    _SAM2_LICENCE, "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt",
                    permissive=True),
    KnownCheckpoint("medsam2_latest", "medsam2", "MedSAM2_latest.pt", "configs/sam2.1/sam2.1_hiera_t.yaml",
                    _MEDSAM2_LICENCE, "Hugging Face model repository wanglab/MedSAM2, file MedSAM2_latest.pt",
                    permissive=None,
                    notes="SAM2.1 tiny fine-tuned at 512; the MedSAM-Agent release ran it at 1024 (image_size)"),
    KnownCheckpoint("medsam2_2411", "medsam2", "MedSAM2_2411.pt", "configs/sam2.1/sam2.1_hiera_t.yaml",
                    _MEDSAM2_LICENCE, "Hugging Face model repository wanglab/MedSAM2, file MedSAM2_2411.pt",
                    permissive=None),
)


def cache_dir() -> Path:
    """Where known checkpoints are looked for (the folder need not exist)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "medsam-agent"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "medsam-agent"


def known_for(family: str) -> list[KnownCheckpoint]:
    return [k for k in KNOWN_CHECKPOINTS if k.family == family]


def lookup(name_or_file: str) -> Optional[KnownCheckpoint]:
    """The known checkpoint with this name or file name (case-insensitive), if any."""
    wanted = Path(name_or_file).name.lower()
    for known in KNOWN_CHECKPOINTS:
        if wanted in (known.name.lower(), known.file_name.lower()):
            return known
    return None


def where_to_get(family: str) -> str:
    lines = [f"  {k.file_name}: {k.source} (licence: {k.licence})" for k in known_for(family)]
    return "\n".join(lines)


def resolve_checkpoint(family: str, checkpoint: Optional[str | os.PathLike]) -> Path:
    """The file to load for ``family``: the user's path, a known name in the cache folder, or the first
    known file of the family found there. Raises ToolError saying where to get the weights."""
    if checkpoint is not None and str(checkpoint).strip():  # "" (an empty path field) means "not given"
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            raise ToolError(f"{family} checkpoint {path} is a folder: give the weights file inside it")
        if path.exists():
            return path
        known = lookup(str(checkpoint))
        if known is not None and (cache_dir() / known.file_name).exists() and path.parent == Path("."):
            return cache_dir() / known.file_name
        raise ToolError(f"{family} checkpoint not found: {path} (no such file)")
    for known in known_for(family):
        candidate = cache_dir() / known.file_name
        if candidate.is_file():
            return candidate
    raise ToolError(
        f"the {family} tool needs weights: pass --checkpoint PATH, or put one of these files in "
        f"{cache_dir()} (set ${CACHE_ENV} to use another folder); nothing is downloaded for you:\n"
        + where_to_get(family)
    )


def load_state_dict(path: str | os.PathLike, family: str) -> dict[str, Any]:
    """Read a checkpoint safely (``torch.load(weights_only=True)``) and return its state dict.

    Accepts a plain state dict (SAM, MedSAM) or one wrapped as {"model": ...} (SAM2, MedSAM2, training
    checkpoints) or {"state_dict": ...}. Each failure names the file and what is wrong with it.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise ToolError(f"{family} checkpoint not found: {path} (no such file)")
    if not path.is_file():
        raise ToolError(f"{family} checkpoint {path} is not a file")
    if path.stat().st_size == 0:
        raise ToolError(f"{family} checkpoint {path} is empty (0 bytes): an interrupted download or copy?")
    try:
        with warnings.catch_warnings():  # torch's note about pickle protocols is noise next to our message
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean the same to the user
        raise ToolError(f"cannot read {family} checkpoint {path}: {_load_failure(error)}") from None
    if isinstance(data, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(data.get(wrapper), Mapping):
                data = data[wrapper]
                break
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ToolError(f"{family} checkpoint {path} holds no state dict of tensors (found {type(data).__name__})")
    return dict(data)


def _load_failure(error: Exception) -> str:
    """torch.load's many-line errors as one clause that keeps what matters: the file is not plain weights,
    and it was not unpickled because that could run code from it."""
    import re

    text = str(error)
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|$)", text)
    if "Weights only load failed" in text:
        return ("not plain PyTorch weights: corrupt, not a checkpoint, or pickled Python objects beyond tensors "
                "(not loaded: unpickling such a file can run code from it)"
                + (f" [{detail.group(1).strip()[:120]}]" if detail else ""))
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"not a loadable PyTorch weights file (corrupt, truncated, or not a checkpoint): {first[:200]}"


def describe_keys(state: Mapping[str, Any]) -> str:
    """What a state dict looks like, for messages about the wrong architecture."""
    keys = list(state)
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        return "a SAM2 / SAM2.1 / MedSAM2 checkpoint (Hiera encoder): use --tool sam2 or --tool medsam2"
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return "a LiteMedSAM / TinyViT checkpoint: use --tool litemedsam"
    if any(k.startswith("image_encoder.blocks.") for k in keys):
        return "a SAM / MedSAM checkpoint (ViT encoder): use --tool sam or --tool medsam"
    return f"an unknown network (first keys: {', '.join(keys[:3])})"


_NOTICES_SHOWN: set[str] = set()


def licence_notice(family: str, path: Path, accept_licence: bool = False) -> Optional[str]:
    """Show (once per process) the licence notice for weights whose terms are not known to be permissive.

    Returns the notice text when one applies. ``accept_licence=True`` (tool option ``accept_licence``) says
    the user has read the terms: the notice is then logged at debug level only.
    """
    known = lookup(path.name)
    if known is None or known.family != family:
        family_known = known_for(family)
        known = family_known[0] if family_known else None
    if known is None or known.permissive:
        return None
    text = (f"licence notice for {path.name} ({family}): {known.licence}. Source: {known.source}. "
            f"Pass the tool option accept_licence=true (or set {ACCEPT_ENV}=1) once you have checked the terms.")
    if accept_licence or as_bool(os.environ.get(ACCEPT_ENV, "")):
        log.debug(text)
    elif family not in _NOTICES_SHOWN:
        _NOTICES_SHOWN.add(family)
        log.info(text)  # info, so that logging's last-resort handler does not print it a second time
        print(f"medsam-agent: {text}", file=sys.stderr)
    return text


def verify_known_hash(path: Path, sha256: str) -> None:
    """Check a file named like a known checkpoint against its verified SHA-256 (where one is listed)."""
    known = lookup(path.name)
    if known is not None and known.sha256 and known.sha256 != sha256:
        raise ToolError(f"{path} is named like the released {known.name} but its SHA-256 differs "
                        f"({sha256[:12]}... vs {known.sha256[:12]}...): re-download it from {known.source}")


def as_bool(value: Any) -> bool:
    """Tool options may arrive as text from the command line ("true", "0", ...)."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ToolError(f"expected true/false, got {value!r}")
    return bool(value)
