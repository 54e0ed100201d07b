"""LiteMedSAM's image encoder on OpenVINO: exported from the real weights at first use, cached, checked.

Why OpenVINO: measured in one process on the CPUs at hand (issue 17; figures in the README), OpenVINO fp32 was
the fastest exact runtime for the TinyViT encoder (max abs difference to eager torch ~3e-6), ahead of ONNX
Runtime fp32; reduced precision (bf16, int8) failed the accuracy bar. The decoder stays on eager torch: on
OpenVINO it was slower (0.7x), and it is small.

The exported model lives in ``<cache folder>/compiled/<key>/`` (the cache folder of ``checkpoints.cache_dir``,
outside the install tree; ``$MEDSAM_AGENT_COMPILED_CACHE`` overrides this one subfolder, e.g. one per CI run).
The key is the weights' SHA-256 and the OpenVINO version; ``meta.json`` beside the model repeats both and the
SHA-256 of the model files, and a model is used only when all of them match. A fresh export is used only
after it reproduces eager torch on a fixed input (``EXPORT_TOLERANCE``). Anything that fails -- OpenVINO
missing, export, load, check -- leaves eager torch in charge, with a one-line warning saying why.
``$MEDSAM_AGENT_RUNTIME=torch`` asks for eager torch outright (the reference).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

RUNTIME_ENV = "MEDSAM_AGENT_RUNTIME"  # "openvino" (default) or "torch"
COMPILED_CACHE_ENV = "MEDSAM_AGENT_COMPILED_CACHE"
INPUT_SHAPE = (1, 3, 256, 256)  # LiteMedSAM's encoder input
EXPORT_TOLERANCE = 1e-3  # max abs difference to eager torch on the check input (fp32 export: ~3e-6)
_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # f32: bf16 fails the bar


def quiet_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``): on shared or busy cores
    the spinning made each decoder call 2-3x slower (issue 17). Only effective before torch is imported, so
    the command line calls it first thing; an explicit setting of the user's is kept."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def compiled_cache_dir() -> Path:
    if os.environ.get(COMPILED_CACHE_ENV):
        return Path(os.environ[COMPILED_CACHE_ENV]).expanduser()
    from .checkpoints import cache_dir

    return cache_dir() / "compiled"


def wanted_runtime(runtime: Optional[str] = None) -> str:
    """``runtime`` when given, else ``$MEDSAM_AGENT_RUNTIME``, else "openvino"."""
    value = (runtime or os.environ.get(RUNTIME_ENV, "") or "openvino").strip().lower()
    if value not in ("openvino", "torch"):
        raise ValueError(f"the LiteMedSAM runtime must be 'openvino' or 'torch' (tool option or "
                         f"${RUNTIME_ENV}), got {value!r}")
    return value


def check_input() -> np.ndarray:
    """A fixed, image-like encoder input (smooth ramps in [0, 1]) for the export check."""
    ys, xs = np.mgrid[0 : INPUT_SHAPE[2], 0 : INPUT_SHAPE[3]].astype(np.float32) / (INPUT_SHAPE[2] - 1)
    channels = [0.5 + 0.5 * np.sin(6 * xs + 3 * ys), xs * ys, 0.5 + 0.5 * np.cos(9 * ys)]
    return np.stack(channels)[None].astype(np.float32)


@dataclass
class EncoderModel:
    """The encoder compiled by OpenVINO; ``__call__`` maps a 1x3x256x256 float32 array to the embedding."""

    compiled: object
    folder: Path
    exported: bool  # True when this process exported it (False: read from the cache)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one inference request, shared by threads (prefetching)
        self._request = self.compiled.create_infer_request()

    def __call__(self, array: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.array(self._request.infer([np.ascontiguousarray(array, np.float32)])[0], copy=True)


def import_openvino():
    """``openvino`` without its usage telemetry. OpenVINO's model converter sends usage statistics to Google
    Analytics unless the user has opted out (``openvino_telemetry``, installed as a dependency); nothing of ours
    leaves the machine, so the package is made unimportable before OpenVINO loads, and the converter falls back
    to OpenVINO's own no-op stub (``openvino.tools.ovc.telemetry_stub``)."""
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # `import openvino_telemetry` now raises ImportError
    import openvino

    return openvino


def openvino_encoder(encoder, weights_sha256: str, cache: Optional[Path] = None) -> EncoderModel:
    """The OpenVINO encoder for these weights: from the cache when a checked copy is there, else exported from
    ``encoder`` (the eager torch module) and checked against it. Raises on any failure (see ``encoder_for``)."""
    ov = import_openvino()

    version = ov.__version__  # e.g. "2026.4.1-22982-e213a147257-releases/2026/4"
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", version)
    folder = (cache or compiled_cache_dir()) / f"litemedsam-encoder-{weights_sha256[:16]}-openvino-{tag}"
    core = ov.Core()
    model_path = folder / "encoder.xml"
    if _cached_ok(folder, weights_sha256, version):
        return EncoderModel(core.compile_model(str(model_path), "CPU", _OV_CONFIG), folder, exported=False)
    import torch

    example = torch.from_numpy(check_input())
    with torch.inference_mode():
        expected = encoder(example).numpy()
    with warnings.catch_warnings():  # tracing warnings about the TinyViT's Python-side shape arithmetic
        warnings.simplefilter("ignore")
        model = ov.convert_model(encoder, example_input=example, input=[INPUT_SHAPE])
    compiled = core.compile_model(model, "CPU", _OV_CONFIG)
    result = EncoderModel(compiled, folder, exported=True)
    difference = float(np.abs(result(check_input()) - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise RuntimeError(f"the exported encoder differs from eager torch by {difference:.2g}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        ov.save_model(model, str(staging / "encoder.xml"), compress_to_fp16=False)
        from .litemedsam import file_sha256

        meta = {"weights_sha256": weights_sha256, "runtime": "openvino", "runtime_version": version,
                "input_shape": list(INPUT_SHAPE), "check_max_abs_difference": difference,
                "files": {name: file_sha256(staging / name) for name in ("encoder.xml", "encoder.bin")}}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)  # a copy that failed its check
        os.replace(staging, folder)
    except OSError:  # e.g. a read-only cache, or another process won the race: this process still has it
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _cached_ok(folder: Path, weights_sha256: str, version: str) -> bool:
    from .litemedsam import file_sha256

    try:
        meta = json.loads((folder / "meta.json").read_text())
        return (meta.get("weights_sha256") == weights_sha256 and meta.get("runtime_version") == version
                and all(file_sha256(folder / name) == digest for name, digest in meta["files"].items())
                and set(meta["files"]) == {"encoder.xml", "encoder.bin"})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def encoder_for(encoder, weights_sha256: str,
                runtime: Optional[str] = None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(encode function, backend name) for LiteMedSAM on the CPU: OpenVINO when it can be had, else eager
    torch with a warning that says why (nothing is downloaded either way)."""
    import torch

    def eager(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return encoder(torch.from_numpy(array)).numpy()

    if wanted_runtime(runtime) == "torch":
        return eager, "torch"
    try:
        return openvino_encoder(encoder, weights_sha256), "openvino"
    except ImportError:
        reason = "OpenVINO is not installed (pip install -c requirements/constraints.txt openvino)"
    except Exception as error:  # export, compile or check: the reference path still works
        first = (str(error).strip().splitlines() or [""])[0][:200]
        reason = f"OpenVINO failed ({type(error).__name__}: {first})"
    warnings.warn(f"{reason}; the LiteMedSAM encoder runs on eager torch (slower, same masks)", RuntimeWarning,
                  stacklevel=2)
    return eager, "torch"
