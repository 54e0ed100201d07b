"""SAM2 / SAM2.1 and MedSAM2 as tools, through the ``sam2`` package's ``SAM2ImagePredictor``.

(Named ``sam2_tool`` so it never shadows the ``sam2`` package.) Install the package with
``SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0`` (no CUDA extension is needed: the image
predictor's optional hole filling, which uses it, stays off).

The predictor does the preprocessing (image resized to image_size x image_size, aspect not kept, ImageNet
mean/std), the prompt transform (pixel / W, H * image_size) and the upsampling back to the image. On top of
it: one embedding per slice, kept per image key, and the protocol's update rule (``protocol_prompts``):
multimask output, the best predicted-IoU candidate kept, logits thresholded at 0, the previous low-res
logits as mask input.

The network comes from the checkpoint: its Hiera width, block count and SAM2.1-only parameters pick the
packaged config (tiny, small, base+, large; SAM2 or SAM2.1), or ``config=`` names one (a packaged config
such as ``configs/sam2.1/sam2.1_hiera_t.yaml`` or a YAML file). ``image_size`` sets the input side:
default 1024, as SAM2 was trained and as the MedSAM-Agent release ran MedSAM2 (its policies learnt from that
tool); MedSAM2 itself was fine-tuned at 512 (``image_size=512``). The low-res logits are image_size / 4 on a
side: 1x256x256 at 1024, 1x128x128 at 512.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..actions import Action
from .base import Prediction, ToolError, protocol_prompts
from .checkpoints import (as_bool, describe_keys, licence_notice, load_state_dict, resolve_checkpoint,
                          verify_known_hash)
from .litemedsam import file_sha256, image_key
from .sam import first_problem, best_candidate, pick_device

DEFAULT_IMAGE_SIZE = 1024
_CACHE_SIZE = 8
# (Hiera width, number of blocks) -> size letter of the packaged configs
_HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
_INSTALL_HINT = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0"


def _import_sam2():
    try:
        import sam2  # noqa: F401  (initialises hydra's config search path for the packaged configs)
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    except ImportError as error:
        raise ToolError(f"the sam2 package is not installed ({error}); install it with: {_INSTALL_HINT}") from None
    return SAM2ImagePredictor


def infer_config(state: Mapping[str, Any], family: str = "sam2") -> str:
    """The packaged config that matches a SAM2 state dict; ToolError naming the network when it is not SAM2."""
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        raise ToolError(f"this is not a SAM2 checkpoint, so the {family} tool cannot use it: it looks like "
                        f"{describe_keys(state)}")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    size = _HIERA_SIZES.get((int(patch.shape[0]), len(blocks)))
    if size is None:
        raise ToolError(f"unknown SAM2 Hiera shape (width {int(patch.shape[0])}, {len(blocks)} blocks): pass "
                        "the matching config with the tool option config=PATH_OR_NAME")
    if "no_obj_embed_spatial" in state:  # a parameter only SAM2.1 has
        return f"configs/sam2.1/sam2.1_hiera_{size}.yaml"
    return f"configs/sam2/sam2_hiera_{size}.yaml"


def load_config(config: str, image_size: int):
    """The model config (a packaged name or a YAML file) with the input side set to ``image_size``."""
    from hydra import compose
    from omegaconf import OmegaConf

    _import_sam2()
    path = Path(config).expanduser()
    try:
        if path.is_file():
            cfg = OmegaConf.load(path)
        else:
            name = config if "/" in config else f"configs/{config.split('_hiera')[0]}/{config}"
            name = name if name.endswith(".yaml") else name + ".yaml"
            cfg = compose(config_name=name)
    except Exception as error:
        raise ToolError(f"cannot read SAM2 config {config!r}: {str(error).splitlines()[0]}") from None
    OmegaConf.set_struct(cfg, False)
    if "model" not in cfg:
        raise ToolError(f"SAM2 config {config!r} has no 'model' section")
    cfg.model.image_size = image_size
    feat = [image_size // 16, image_size // 16]
    for part in ("self_attention", "cross_attention"):  # memory attention (videos only), kept consistent
        node = OmegaConf.select(cfg, f"model.memory_attention.layer.{part}")
        if node is not None and "feat_sizes" in node:
            node.feat_sizes = feat
    # what sam2.build_sam.build_sam2 adds by default (only used for single-mask output)
    cfg.model.sam_mask_decoder_extra_args = {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    OmegaConf.resolve(cfg)
    return cfg


def build_sam2_model(cfg):
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.model, _recursive_=True)
    except Exception as error:
        raise ToolError(f"cannot build the SAM2 network from its config: {str(error).splitlines()[0]}") from None


class SAM2Tool:
    """``SegmentationTool`` over SAM2 / SAM2.1; one instance holds the network and a few cached embeddings."""

    name = "sam2"
    family = "sam2"
    trained_with_clicks = True

    def __init__(self, checkpoint: Optional[str | Path] = None, device: Optional[str] = None, *,
                 config: Optional[str] = None, image_size: int | str = DEFAULT_IMAGE_SIZE,
                 accept_licence: bool | str = False):
        import torch

        predictor_class = _import_sam2()
        self._torch = torch
        self.device = pick_device(device)
        try:
            self.image_size = int(image_size)
        except (TypeError, ValueError):
            raise ToolError(f"image_size must be a whole number such as 512 or 1024, got {image_size!r}") from None
        if self.image_size < 64 or self.image_size % 32:
            raise ToolError(f"image_size must be a multiple of 32 (e.g. 512 or 1024), got {self.image_size}")
        path = resolve_checkpoint(self.family, checkpoint)
        state = load_state_dict(path, self.family)
        if config is None:
            config = infer_config(state, self.family)
        elif "image_encoder.trunk.patch_embed.proj.weight" not in state:
            raise ToolError(f"this is not a SAM2 checkpoint, so the {self.family} tool cannot use it: it looks "
                            f"like {describe_keys(state)}")
        self.config = str(config)
        model = build_sam2_model(load_config(self.config, self.image_size))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ToolError(f"{path} does not match the SAM2 config {self.config}: {first_problem(error)}") from None
        digest = file_sha256(path)
        verify_known_hash(path, digest)
        licence_notice(self.family, path, as_bool(accept_licence))
        self.model = model.to(self.device).eval()
        with warnings.catch_warnings():  # sam2 1.1.0 scripts its transforms; torch calls that deprecated
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            self.predictor = predictor_class(self.model)
        side = self.image_size
        # the predictor assumes 1024 input; its feature maps are image_size / 4, / 8, / 16 on a side
        self.predictor._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
        self.checkpoint = str(path)
        arch = Path(self.config).stem
        self.version = f"{self.family}-{arch}@{side}:{digest[:12]}"
        self._cache: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._image: Optional[np.ndarray] = None
        self.encode_count = 0  # how many embeddings were computed (tests and benchmarks read it)

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    # -- image --------------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ToolError(f"{self.name} needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        key = key or image_key(image)
        self._image = image
        predictor = self.predictor
        if key in self._cache:
            self._cache.move_to_end(key)
            features, orig_hw = self._cache[key]
            predictor.reset_predictor()
            predictor._features, predictor._orig_hw, predictor._is_image_set = features, orig_hw, True
            return
        predictor.set_image(image if image.flags.writeable else image.copy())  # torchvision wants writable
        self.encode_count += 1
        self._cache[key] = (predictor._features, predictor._orig_hw)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    # -- prompts ------------------------------------------------------------------------------------------
    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        if self._image is None or not self.predictor._is_image_set:
            raise ToolError("set_image must be called before predict")
        prompts = protocol_prompts(actions, previous)
        mask_input = None
        if prompts.mask_input is not None:
            mask_input = np.asarray(prompts.mask_input, np.float32)
            expected = (1, self.low_res_size, self.low_res_size)
            if mask_input.shape != expected:
                raise ToolError(f"{self.name} at image_size {self.image_size} takes previous logits of shape "
                                f"{expected}, got {mask_input.shape} (from another tool or image size?)")
        full, scores, low_res = self.predictor.predict(
            point_coords=prompts.points if prompts.points is not None and len(prompts.points) else None,
            point_labels=prompts.labels if prompts.points is not None and len(prompts.points) else None,
            box=prompts.box,
            mask_input=mask_input,
            multimask_output=True,
            return_logits=True,
            normalize_coords=True,
        )
        return best_candidate(full, low_res, scores)


class MedSAM2Tool(SAM2Tool):
    """MedSAM2 (bowang-lab, SAM2.1 tiny fine-tuned on medical images). Same network and update rule as
    SAM2; ``image_size`` 1024 (the release's choice, default) or 512 (MedSAM2's training size)."""

    name = "medsam2"
    family = "medsam2"
