"""SAM (ViT-B/L/H) and MedSAM as tools, with ``segment-anything``'s own network classes.

- SAM: the image's longest side to 1024 (``ResizeLongestSide``), ImageNet mean/std, padded bottom/right to
  1024x1024 (``Sam.preprocess``); prompts through the same transform; masks cropped and resized back
  (``Sam.postprocess_masks``), exactly as ``SamPredictor`` does. Follows the protocol's update rule
  (``protocol_prompts``): multimask output, the best predicted-IoU candidate kept, logits thresholded at 0.
- MedSAM (bowang-lab/MedSAM): a SAM ViT-B checkpoint fine-tuned with box prompts. Its own preprocessing:
  the image resized to 1024x1024 (aspect not kept; cubic spline with anti-aliasing, back to uint8, as
  MedSAM's inference script), min-max normalised to [0, 1], no ImageNet mean/std, no padding; prompts
  scaled by 1024/W and 1024/H; low-res logits resized straight to the image. MedSAM was trained with
  single-mask output, so ``multimask`` defaults to False for it (option ``multimask=true`` for the three
  outputs); its prompt encoder is SAM's (frozen in training), so clicks go to the decoder by the same
  update rule, though the model never learnt them (``trained_with_clicks`` is False).

The architecture comes from the state dict's shapes (embedding width, depth, heads from the relative
position tables, which blocks are global), so ``--checkpoint FILE`` is enough for ViT-B/L/H and for any
other ``ImageEncoderViT`` shape; ``arch=vit_b|vit_l|vit_h`` asks for one and fails clearly on a mismatch.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..actions import Action
from .base import Prediction, ToolError, probability, protocol_prompts
from .checkpoints import (as_bool, describe_keys, licence_notice, load_state_dict, resolve_checkpoint,
                          verify_known_hash)
from .litemedsam import file_sha256, image_key

_CACHE_SIZE = 8  # embeddings kept, so flipping between a few slices costs nothing


@dataclass(frozen=True)
class SamArch:
    """The ``ImageEncoderViT`` shape read from a state dict (the prompt encoder and decoder are SAM's)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    img_size: int = 1024
    patch_size: int = 16
    out_chans: int = 256

    @property
    def name(self) -> str:
        for name, arch in STANDARD_ARCHS.items():
            if arch == self:
                return name
        return f"vit(embed={self.embed_dim},depth={self.depth},heads={self.num_heads})"


STANDARD_ARCHS = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), 14),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), 14),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), 14),
}


def infer_arch(state: Mapping[str, Any], family: str = "sam") -> SamArch:
    """Read the encoder's shape from a SAM state dict; ToolError naming the network when it is not SAM."""
    prefix = "image_encoder."
    try:
        patch = state[prefix + "patch_embed.proj.weight"]  # (C, 3, p, p)
        pos = state[prefix + "pos_embed"]  # (1, S/p, S/p, C)
        neck = state[prefix + "neck.0.weight"]  # (out, C, 1, 1)
    except KeyError:
        raise ToolError(f"this is not a SAM ViT checkpoint, so the {family} tool cannot use it: it looks like "
                        f"{describe_keys(state)}") from None
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(pos.shape[1])
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise ToolError(f"SAM checkpoint has missing encoder blocks ({blocks[:5]}...): it is incomplete")
    global_blocks, window, head_dim = [], 0, None
    for i in blocks:
        rel = state.get(f"{prefix}blocks.{i}.attn.rel_pos_h")
        if rel is None:
            raise ToolError(f"SAM checkpoint block {i} has no relative position table: not a SAM encoder")
        size = (int(rel.shape[0]) + 1) // 2
        head_dim = int(rel.shape[1])
        if size == grid:
            global_blocks.append(i)
        else:
            window = size
    if head_dim is None or embed_dim % head_dim:
        raise ToolError("SAM checkpoint has inconsistent attention shapes")
    return SamArch(embed_dim, len(blocks), embed_dim // head_dim, tuple(global_blocks), window,
                   grid * patch_size, patch_size, int(neck.shape[0]))


def build_sam(arch: SamArch):
    """A ``segment_anything`` Sam with this encoder (weights uninitialised until loaded)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embed = arch.img_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads,
            patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=arch.global_attn_indexes, window_size=arch.window_size,
            out_chans=arch.out_chans,
        ),
        prompt_encoder=PromptEncoder(embed_dim=arch.out_chans, image_embedding_size=(embed, embed),
                                     input_image_size=(arch.img_size, arch.img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=arch.out_chans, mlp_dim=2048, num_heads=8),
            transformer_dim=arch.out_chans, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def pick_device(device: Optional[str]):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class SAMTool:
    """``SegmentationTool`` over SAM; one instance holds the network and a few cached embeddings."""

    name = "sam"
    family = "sam"
    trained_with_clicks = True
    default_multimask = True

    def __init__(self, checkpoint: Optional[str | Path] = None, device: Optional[str] = None, *,
                 arch: Optional[str] = None, multimask: Optional[bool | str] = None,
                 accept_licence: bool | str = False):
        import torch

        self._torch = torch
        self.device = pick_device(device)
        path = resolve_checkpoint(self.family, checkpoint)
        state = load_state_dict(path, self.family)
        found = infer_arch(state, self.family)
        if arch is not None:
            wanted = STANDARD_ARCHS.get(str(arch).lower().replace("-", "_"))
            if wanted is None:
                raise ToolError(f"unknown SAM arch {arch!r}; choose one of {', '.join(STANDARD_ARCHS)}")
            if wanted != found:
                raise ToolError(f"{path} is a {found.name} checkpoint (embed {found.embed_dim}, {found.depth} "
                                f"blocks), not the {arch} that was asked for")
        model = build_sam(found)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ToolError(f"{path} does not match the {found.name} {self.family} network: "
                            f"{first_problem(error)}") from None
        digest = file_sha256(path)
        verify_known_hash(path, digest)
        licence_notice(self.family, path, as_bool(accept_licence))
        self.model = model.to(self.device).eval()
        self.arch = found
        self.checkpoint = str(path)
        self.multimask = self.default_multimask if multimask is None else as_bool(multimask)
        self.version = f"{self.family}-{found.name}:{digest[:12]}"
        self._cache: OrderedDict[str, tuple[Any, tuple[int, int]]] = OrderedDict()
        self._image: Optional[np.ndarray] = None
        self._features = None
        self._input_size: tuple[int, int] = (0, 0)
        self.encode_count = 0  # how many embeddings were computed (tests and benchmarks read it)

    # -- image --------------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ToolError(f"{self.name} needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        key = key or image_key(image)
        self._image = image
        if key in self._cache:
            self._cache.move_to_end(key)
            self._features, self._input_size = self._cache[key]
            return
        with self._torch.inference_mode():
            self._features, self._input_size = self._encode(image)
        self.encode_count += 1
        self._cache[key] = (self._features, self._input_size)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _encode(self, image: np.ndarray):
        """SamPredictor.set_image's steps: longest side to 1024, mean/std, pad; returns (features, input_size)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        transform = ResizeLongestSide(self.model.image_encoder.img_size)
        resized = transform.apply_image(image)
        tensor = self._torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self.model.image_encoder(self.model.preprocess(tensor.float())), tuple(resized.shape[:2])

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        """Image pixel (x, y) -> the encoder input frame."""
        from segment_anything.utils.transforms import ResizeLongestSide

        assert self._image is not None
        transform = ResizeLongestSide(self.model.image_encoder.img_size)
        return transform.apply_coords(np.asarray(xy, np.float64), self._image.shape[:2]).astype(np.float32)

    def upsample(self, low_res):
        """Low-res logits (K x 256 x 256 tensor) -> logits at the image's resolution (K x H x W tensor)."""
        assert self._image is not None
        return self.model.postprocess_masks(low_res[None], self._input_size, self._image.shape[:2])[0]

    # -- prompts ------------------------------------------------------------------------------------------
    def predict(self, actions: Sequence[Action], previous: Optional[Prediction]) -> Prediction:
        if self._features is None or self._image is None:
            raise ToolError("set_image must be called before predict")
        torch = self._torch
        prompts = protocol_prompts(actions, previous)
        device = self.device
        with torch.inference_mode():
            points = None
            if prompts.points is not None and len(prompts.points):
                coords = torch.as_tensor(self.to_input(prompts.points), device=device)[None]
                points = (coords, torch.as_tensor(prompts.labels, dtype=torch.int, device=device)[None])
            boxes = None
            if prompts.box is not None:
                corners = self.to_input(prompts.box.reshape(2, 2)).reshape(1, 4)
                boxes = torch.as_tensor(corners, device=device)
            masks = None
            if prompts.mask_input is not None:
                masks = torch.as_tensor(np.asarray(prompts.mask_input, np.float32), device=device)[None]
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, scores = self.model.mask_decoder(
                image_embeddings=self._features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.multimask,
            )
            low_res, scores = low_res[0].float(), scores[0].float()
            full = self.upsample(low_res).cpu().numpy()
        return best_candidate(full, low_res.cpu().numpy(), scores.cpu().numpy())


class MedSAMTool(SAMTool):
    """MedSAM: SAM ViT-B fine-tuned with boxes, with MedSAM's own preprocessing (see the module docstring)."""

    name = "medsam"
    family = "medsam"
    trained_with_clicks = False
    default_multimask = False

    def _encode(self, image: np.ndarray):
        from skimage import transform as sk_transform

        size = self.model.image_encoder.img_size
        resized = sk_transform.resize(image, (size, size), order=3, preserve_range=True, anti_aliasing=True)
        resized = np.clip(resized, 0, 255).astype(np.uint8).astype(np.float64)  # MedSAM casts to uint8 here
        resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
        tensor = self._torch.as_tensor(resized.astype(np.float32), device=self.device).permute(2, 0, 1)[None]
        return self.model.image_encoder(tensor.contiguous()), (size, size)

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        assert self._image is not None
        h, w = self._image.shape[:2]
        size = self.model.image_encoder.img_size
        return (np.asarray(xy, np.float64) * np.array([size / w, size / h])).astype(np.float32)

    def upsample(self, low_res):
        assert self._image is not None
        full = self._torch.nn.functional.interpolate(low_res[None], size=self._image.shape[:2], mode="bilinear",
                                                     align_corners=False)
        return full[0]


def best_candidate(full_logits: np.ndarray, low_res: np.ndarray, scores: np.ndarray) -> Prediction:
    """Keep the highest predicted-IoU candidate; the others become ``candidates``."""
    best = int(np.argmax(scores))
    foreground = probability(full_logits[best])
    return Prediction(
        mask=full_logits[best] > 0,
        logits=low_res[best : best + 1].astype(np.float32),
        score=float(np.clip(scores[best], 0.0, 1.0)),
        candidates=[full_logits[i] > 0 for i in range(len(scores)) if i != best],
        probability=foreground.astype(np.float32),
    )


def first_problem(error: Exception) -> str:
    """The first concrete line of a load_state_dict error (missing/unexpected key or size mismatch)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if line]
    return (detail[0] if detail else lines[0])[:300]
