"""LiteMedSAM on OpenVINO: the image encoder, and the prompt encoder + mask decoder, exported from the real
weights at first use, cached, checked.

Why OpenVINO: measured in one process on the CPUs at hand (issue 17; figures in the README), OpenVINO fp32 was
the fastest exact runtime for the TinyViT encoder (max abs difference to eager torch ~3e-6), ahead of ONNX
Runtime fp32; int8 failed the accuracy bar. bf16 (on CPUs with AVX512_BF16/AMX) is opt-in, encoder only
(``precision="bf16"``): ~2.4x f32 there, Dice@5 within the issue's bar for a reduced-precision path but not
exact (README). The decoder (box, clicks, box + clicks; no mask input -- the tool never sends one) is one
exported graph with all four mask tokens: ~2x eager per call here, and with both models cached the tool runs
without importing torch or timm at all (``cached_models``): those imports were most of a cold start.

The exported models live in ``<cache folder>/compiled/<key>/`` (the cache folder of ``checkpoints.cache_dir``,
outside the install tree; ``$MEDSAM_AGENT_COMPILED_CACHE`` overrides this one subfolder, e.g. one per CI run).
The key is the part, the weights' SHA-256 and the OpenVINO version; ``meta.json`` beside the model repeats
both and the SHA-256 of the model files, and a model is used only when all of them match. A fresh export is
used only after it reproduces eager torch on fixed inputs (``EXPORT_TOLERANCE``). Anything that fails --
OpenVINO missing, export, load, check -- leaves eager torch in charge, with a one-line warning saying why.
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
EXPORT_TOLERANCE = 1e-3  # max abs difference to eager torch on the check inputs (fp32: encoder ~3e-6,
# decoder logits ~5e-5 of magnitudes ~30)
_OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
PRECISIONS = ("f32", "bf16")  # the encoder's; the decoder always runs f32
BF16_EXPORT_TOLERANCE = 0.5  # bf16 encoder vs eager torch, check input: measured 0.055


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


def wanted_precision(precision: Optional[str], runtime: str, on_cpu: bool = True) -> str:
    """The encoder's precision, "f32" (default, exact) or "bf16" (opt-in: OpenVINO on a CPU with bf16
    instructions -- AVX512_BF16 / AMX; ~2.4x f32 there, Dice@5 within the issue-17 bar, not identical).
    Raises ValueError saying what is wrong."""
    value = (precision or "f32").strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"the LiteMedSAM precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if value == "bf16":
        if runtime != "openvino" or not on_cpu:
            raise ValueError("precision=bf16 is an OpenVINO CPU option; it does not apply to "
                             + ("runtime=torch" if runtime != "openvino" else "a GPU device"))
        try:
            capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except ImportError:
            raise ValueError("precision=bf16 needs OpenVINO (pip install -c requirements/constraints.txt "
                             "openvino)") from None
        if "BF16" not in capabilities:
            raise ValueError("precision=bf16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX); this one "
                             f"has {', '.join(capabilities)}: use the default precision=f32")
    return value


def _config(precision: str = "f32") -> dict:
    return {**_OV_CONFIG, "INFERENCE_PRECISION_HINT": precision}


def check_input() -> np.ndarray:
    """A fixed, image-like encoder input (smooth ramps in [0, 1]) for the export check."""
    ys, xs = np.mgrid[0 : INPUT_SHAPE[2], 0 : INPUT_SHAPE[3]].astype(np.float32) / (INPUT_SHAPE[2] - 1)
    channels = [0.5 + 0.5 * np.sin(6 * xs + 3 * ys), xs * ys, 0.5 + 0.5 * np.cos(9 * ys)]
    return np.stack(channels)[None].astype(np.float32)


@dataclass
class CompiledModel:
    """A model compiled by OpenVINO, with one inference request shared by threads (prefetching)."""

    compiled: object
    folder: Path
    exported: bool  # True when this process exported it (False: read from the cache)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._request = self.compiled.create_infer_request()

    def infer(self, *arrays: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer([np.ascontiguousarray(a, np.float32) for a in arrays])
            return [np.array(results[i], copy=True) for i in range(len(results))]


class EncoderModel(CompiledModel):
    """``__call__`` maps a 1x3x256x256 float32 array to the 1x256x64x64 embedding."""

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return self.infer(array)[0]


class DecoderModel(CompiledModel):
    """LiteMedSAM's prompt encoder + mask decoder in one model: ``__call__(embedding, coords, labels)`` with
    coords 1xNx2 in 256-pixel input coordinates and labels 1xN (1 positive, 0 negative, 2/3 box corners, -1
    padding; ``decoder_prompts``) returns (low-res logits 1x4x256x256, predicted IoU 1x4): all four mask
    tokens, the caller slices them as ``MaskDecoder`` does (0 single mask, 1-3 multimask)."""

    def __call__(self, embedding: np.ndarray, coords: np.ndarray, labels: np.ndarray):
        logits, iou = self.infer(embedding, coords, labels)
        return logits, iou


def decoder_prompts(box: Optional[np.ndarray], points: Optional[np.ndarray],
                    labels: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(coords 1xNx2, labels 1xN) float32 for ``DecoderModel`` from prompts in 256-pixel coordinates, in the
    order and with the padding of ``PromptEncoder.forward``: points first (a padding point when there is no
    box), then the box's two corners (labels 2 and 3)."""
    coords, kinds = [], []
    if points is not None and len(points):
        coords += [np.asarray(points, np.float32).reshape(-1, 2)]
        kinds += [np.asarray(labels, np.float32).reshape(-1)]
        if box is None:
            coords, kinds = coords + [np.zeros((1, 2), np.float32)], kinds + [np.array([-1], np.float32)]
    if box is not None:
        coords += [np.asarray(box, np.float32).reshape(2, 2)]
        kinds += [np.array([2, 3], np.float32)]
    if not coords:
        raise ValueError("the decoder needs a box or points")
    return np.concatenate(coords)[None], np.concatenate(kinds)[None]


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


def _folder(part: str, weights_sha256: str, version: str, cache: Optional[Path], precision: str = "f32") -> Path:
    """The cache folder; a bf16 encoder has its own (``litemedsam-encoder-bf16-...``), f32 names are unchanged."""
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", version)  # e.g. "2026.4.1-22982-e213a147257-releases/2026/4"
    name = part if precision == "f32" else f"{part}-{precision}"
    return (cache or compiled_cache_dir()) / f"litemedsam-{name}-{weights_sha256[:16]}-openvino-{tag}"


def _from_cache(ov, kind: type, part: str, weights_sha256: str, cache: Optional[Path],
                precision: str = "f32") -> Optional[CompiledModel]:
    """The cached, checked model for these weights, compiled; None when there is none (or it fails a check)."""
    folder = _folder(part, weights_sha256, ov.__version__, cache, precision)
    if not _cached_ok(folder, weights_sha256, ov.__version__, part):
        return None
    # OpenVINO's compiled blob lives inside the checked folder: it goes when the folder is re-exported (``_save``
    # replaces the whole folder), so it never outlives the model files it was compiled from
    try:
        compiled = ov.Core().compile_model(str(folder / f"{part}.xml"), "CPU",
                                           {**_config(precision), "CACHE_DIR": str(folder / "blob")})
    except RuntimeError:  # e.g. a read-only cache: compile without keeping the blob
        compiled = ov.Core().compile_model(str(folder / f"{part}.xml"), "CPU", _config(precision))
    return kind(compiled, folder, exported=False)


def _save(ov, model, part: str, weights_sha256: str, cache: Optional[Path], details: dict,
          precision: str = "f32") -> None:
    """Write the checked export into the cache atomically (staging folder, then rename)."""
    from .litemedsam import file_sha256

    version = ov.__version__
    folder = _folder(part, weights_sha256, version, cache, precision)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        ov.save_model(model, str(staging / f"{part}.xml"), compress_to_fp16=False)
        meta = {"weights_sha256": weights_sha256, "runtime": "openvino", "runtime_version": version, **details,
                "files": {name: file_sha256(staging / name) for name in (f"{part}.xml", f"{part}.bin")}}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)  # a copy that failed its check
        os.replace(staging, folder)
    except OSError:  # e.g. a read-only cache, or another process won the race: this process still has it
        shutil.rmtree(staging, ignore_errors=True)


def openvino_encoder(encoder, weights_sha256: str, cache: Optional[Path] = None,
                     precision: str = "f32") -> EncoderModel:
    """The OpenVINO encoder for these weights: from the cache when a checked copy is there, else exported from
    ``encoder`` (the eager torch module) and checked against it. Raises on any failure (see ``encoder_for``).
    ``precision`` "bf16": the same f32 graph compiled with OpenVINO's bf16 inference precision, in its own
    cache folder, checked against eager torch with ``BF16_EXPORT_TOLERANCE``."""
    ov = import_openvino()
    cached = _from_cache(ov, EncoderModel, "encoder", weights_sha256, cache, precision)
    if cached is not None:
        return cached
    import torch

    example = torch.from_numpy(check_input())
    with torch.inference_mode():
        expected = encoder(example).numpy()
    f32 = _folder("encoder", weights_sha256, ov.__version__, cache)
    if precision != "f32" and _cached_ok(f32, weights_sha256, ov.__version__):  # the same graph, converted once
        model = ov.Core().read_model(str(f32 / "encoder.xml"))
    else:
        with warnings.catch_warnings():  # tracing warnings about the TinyViT's Python-side shape arithmetic
            warnings.simplefilter("ignore")
            model = ov.convert_model(encoder, example_input=example, input=[INPUT_SHAPE])
    result = EncoderModel(ov.Core().compile_model(model, "CPU", _config(precision)),
                          _folder("encoder", weights_sha256, ov.__version__, cache, precision), exported=True)
    difference = float(np.abs(result(check_input()) - expected).max())
    if not difference <= (EXPORT_TOLERANCE if precision == "f32" else BF16_EXPORT_TOLERANCE):
        raise RuntimeError(f"the exported {precision} encoder differs from eager torch by {difference:.2g}")
    _save(ov, model, "encoder", weights_sha256, cache,
          {"input_shape": list(INPUT_SHAPE), "precision": precision, "check_max_abs_difference": difference},
          precision)
    return result


def _decoder_module(prompt_encoder, mask_decoder):
    """A torch module for export: ``PromptEncoder`` for points/boxes without a mask input (its point and box
    embedding written with masks instead of in-place indexing, so one graph takes any prompt) followed by
    ``MaskDecoder.predict_masks`` with all four mask tokens. Checked against the real modules at export."""
    import torch

    class PromptsToMasks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder
            self.register_buffer("image_pe", prompt_encoder.get_dense_pe().detach().clone())

        def forward(self, embedding, coords, labels):
            pe = self.prompt_encoder
            size = torch.tensor(pe.input_image_size[::-1], dtype=coords.dtype)  # (w, h), as forward_with_coords
            sparse = pe.pe_layer._pe_encoding((coords + 0.5) / size)
            kind = labels.unsqueeze(-1)
            sparse = sparse * (kind != -1).to(sparse.dtype) + pe.not_a_point_embed.weight * (kind == -1).to(sparse.dtype)
            for i in range(pe.num_point_embeddings):
                sparse = sparse + pe.point_embeddings[i].weight * (kind == i).to(sparse.dtype)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
            return self.mask_decoder.predict_masks(embedding, self.image_pe, sparse, dense)

    return PromptsToMasks().eval()


def _eager_decode(prompt_encoder, mask_decoder, embedding, coords, labels):
    """The real modules' output for a ``decoder_prompts`` prompt (the reference the export is checked on)."""
    import torch

    kinds = labels[0]
    clicks, corners = (kinds == 0) | (kinds == 1), kinds >= 2  # the padding point (-1) is the encoder's own
    points = (torch.from_numpy(coords[:, clicks]), torch.from_numpy(kinds[clicks][None]).long()) if clicks.any() else None
    box = torch.from_numpy(coords[:, corners].reshape(1, 1, 4)) if corners.any() else None
    with torch.inference_mode():
        sparse, dense = prompt_encoder(points=points, boxes=box, masks=None)
        logits, iou = mask_decoder.predict_masks(torch.from_numpy(embedding), prompt_encoder.get_dense_pe(),
                                                 sparse, dense)
    return logits.numpy(), iou.numpy()


def openvino_decoder(prompt_encoder, mask_decoder, encoder, weights_sha256: str,
                     cache: Optional[Path] = None) -> DecoderModel:
    """The OpenVINO prompt encoder + mask decoder for these weights: from the cache when a checked copy is
    there, else exported and checked against the eager modules on the check input's embedding, for a box, for
    clicks, and for a box with clicks. Raises on any failure (see ``decoder_for``)."""
    ov = import_openvino()
    cached = _from_cache(ov, DecoderModel, "decoder", weights_sha256, cache)
    if cached is not None:
        return cached
    import torch

    with torch.inference_mode():
        embedding = encoder(torch.from_numpy(check_input())).numpy()
    checks = [decoder_prompts(np.array([40, 52, 190, 170]), None, None),
              decoder_prompts(None, np.array([[120, 100], [60, 200]]), np.array([1, 0])),
              decoder_prompts(np.array([10, 20, 250, 230]), np.array([[128, 128]]), np.array([1]))]
    module = _decoder_module(prompt_encoder, mask_decoder)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=tuple(torch.from_numpy(a) for a in (embedding, *checks[0])),
                                 input=[[1, 256, 64, 64], [1, -1, 2], [1, -1]])
    result = DecoderModel(ov.Core().compile_model(model, "CPU", _OV_CONFIG),
                          _folder("decoder", weights_sha256, ov.__version__, cache), exported=True)
    difference = 0.0
    for coords, labels in checks:
        expected = _eager_decode(prompt_encoder, mask_decoder, embedding, coords, labels)
        got = result(embedding, coords, labels)
        difference = max(difference, *(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
    if not difference <= EXPORT_TOLERANCE:
        raise RuntimeError(f"the exported decoder differs from eager torch by {difference:.2g}")
    _save(ov, model, "decoder", weights_sha256, cache, {"check_max_abs_difference": difference})
    return result


def cached_models(weights_sha256: str, cache: Optional[Path] = None,
                  precision: str = "f32") -> Optional[tuple[EncoderModel, DecoderModel]]:
    """(encoder, decoder) from the cache when both checked copies for these weights are there, else None.
    Imports neither torch nor timm: with them the tool runs on OpenVINO and numpy alone (issue 17). The
    encoder is the one of ``precision``; the decoder is f32 always."""
    try:
        ov = import_openvino()
        version = ov.__version__
        if not all(_cached_ok(_folder(part, weights_sha256, version, cache, p), weights_sha256, version, part)
                   for part, p in (("encoder", precision), ("decoder", "f32"))):
            return None  # checked before compiling either (file hashes are computed once per process)
        encoder = _from_cache(ov, EncoderModel, "encoder", weights_sha256, cache, precision)
        decoder = _from_cache(ov, DecoderModel, "decoder", weights_sha256, cache)
    except Exception:  # not installed, or a cached copy that will not compile: the torch path re-exports
        return None
    return (encoder, decoder) if encoder is not None and decoder is not None else None


def _cached_ok(folder: Path, weights_sha256: str, version: str, part: str = "encoder") -> bool:
    from .litemedsam import file_sha256

    names = {f"{part}.xml", f"{part}.bin"}
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return (meta.get("weights_sha256") == weights_sha256 and meta.get("runtime_version") == version
                and set(meta["files"]) == names
                and all(file_sha256(folder / name) == digest for name, digest in meta["files"].items()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def encoder_for(encoder, weights_sha256: str, runtime: Optional[str] = None,
                precision: str = "f32") -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(encode function, backend name) for LiteMedSAM on the CPU: OpenVINO (of ``precision``) when it can be
    had, else eager torch (f32) with a warning that says why (nothing is downloaded either way)."""
    import torch

    def eager(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return encoder(torch.from_numpy(array)).numpy()

    if wanted_runtime(runtime) == "torch":
        return eager, "torch"
    try:
        return openvino_encoder(encoder, weights_sha256, precision=precision), "openvino"
    except ImportError:
        reason = "OpenVINO is not installed (pip install -c requirements/constraints.txt openvino)"
    except Exception as error:  # export, compile or check: the reference path still works
        first = (str(error).strip().splitlines() or [""])[0][:200]
        reason = f"OpenVINO failed ({type(error).__name__}: {first})"
    warnings.warn(f"{reason}; the LiteMedSAM encoder runs on eager torch (slower, same masks)", RuntimeWarning,
                  stacklevel=2)
    return eager, "torch"


def decoder_for(net, weights_sha256: str, runtime: Optional[str] = None) -> Optional[DecoderModel]:
    """The OpenVINO prompt encoder + mask decoder for ``net`` (eager LiteMedSAM), or None -- eager torch --
    when ``runtime`` is "torch" or OpenVINO is missing or fails (with a warning that says why)."""
    if wanted_runtime(runtime) == "torch":
        return None
    try:
        return openvino_decoder(net.prompt_encoder, net.mask_decoder, net.image_encoder, weights_sha256)
    except ImportError:
        reason = "OpenVINO is not installed (pip install -c requirements/constraints.txt openvino)"
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        reason = f"OpenVINO failed ({type(error).__name__}: {first})"
    warnings.warn(f"{reason}; the LiteMedSAM decoder runs on eager torch (slower, same masks)", RuntimeWarning,
                  stacklevel=2)
    return None
