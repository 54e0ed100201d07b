"""Click refinement for box-trained tools (LiteMedSAM): the tool's logits are the prior, each click a local,
edge-aware correction of them. Chosen by measurement on ../shared/data (``medsam-agent evaluate --protocol
clicks`` and Testing/benchmarks/bench_clicks.py; the figures are in the README): LiteMedSAM's own decoder gets
worse with clicks, because it never saw them.

Why this works: LiteMedSAM's logit landscape follows the object's shape well but its zero level is often in
the wrong place. A click says "the logit here is on the wrong side". Each click, in order, adds a bump to the
logit field:

    L(x) += s * A * w(x) * exp(-D(x)^2 / (2 r^2)),    A = max(0, margin - s * L(click)),  s = +1 / -1

- ``D`` is the geodesic distance from the click over a cost that grows with the image gradient and with the
  intensity difference to the clicked pixel, so the bump spreads over similar tissue and stops at edges;
- ``w`` is the pointwise likeness to the clicked intensity, ``exp(-0.5 (|I - I(click)| / similarity)^2)``:
  the geodesic cost stops a bump at a barrier, but a thin bright vessel inside a dark region it sweeps over
  costs one pixel's step; ``w`` keeps such pixels as they were;
- ``r`` is ``reach`` box sizes (the box's geometric mean side), shrunk by ``sqrt(big_shift / A)`` when the
  shift is larger than ``big_shift`` (a click that must overrule a confident model acts more locally);
- the bump stops where an earlier click of the other sign is geodesically nearer: two clicks of opposite
  signs split the ground between them instead of undoing each other;
- negative clicks act with a lighter hand than positive ones (LiteMedSAM under-segments, so its weakly
  positive pixels next to a false protrusion are mostly true): a smaller ``negative_margin``, and a reach of
  at most ``negative_depth`` times the click's depth in the false region (its distance to the mask's edge),
  so a click in a thin false rim does not take away the true region behind it.

A click that must overrule a very confident model (shift >= ``structural_shift``: the cavity inside a ring,
a whole cell region) is a structural error rather than a boundary one: the pixels of the wrong side that are
geodesically within ``region_growth`` times the click's distance to the clicked side (and closer to it than
to any earlier opposite click) are also set to the clicked side.

The new mask is ``L > 0``: the clicked pixel always ends on the clicked side (A is exactly what it takes), a
positive click only adds pixels and a negative one only removes pixels, and where the model was confident
far from the click nothing changes; the new boundary follows the model's level sets, so it keeps the model's
shape. Clicks are applied in order from the box's logits, so the result depends only on (image, box, clicks);
a small cache of intermediate fields makes each new click cost one geodesic pass in a window.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .actions import Box, Point
from .tools.base import Prediction, probability


@dataclass(frozen=True)
class RefinementSettings:
    """Every parameter of the method, in one place (values chosen on the shared 2D set; see the README)."""

    margin: float = 2.0  # logit a positive click leaves at its own pixel
    negative_margin: float = 1.0  # ... and a negative click (on its side: -1)
    reach: float = 0.6  # geodesic reach of a click's shift (Gaussian sigma), in box sizes
    negative_depth: float = 8.0  # a negative click reaches at most this times its depth in the false region
    negative_depth_offset: float = 2.0  # ... plus this many pixels
    big_shift: float = 6.0  # shifts larger than this act more locally: reach * sqrt(big_shift / A)
    edge_weight: float = 1.0  # geodesic cost per unit of image gradient (gradient / its mean in the box)
    intensity_weight: float = 4.0  # cost per unit of |I - I(click)| (intensity / its std in the box, summed
    # over the channels)
    similarity: float = 3.75  # the bump's pointwise weight: exp(-0.5 (|I - I(click)| / this)^2) (3 channels)
    feature_blur: float = 1.0  # Gaussian sigma (pixels) of the image before gradients and intensities
    click_patch: int = 1  # the clicked intensity is the mean of a (2k+1)^2 patch
    window: float = 3.0  # the shift is computed within this many reaches of the click (it is ~0 beyond)
    structural_shift: float = 9.0  # clicks needing at least this shift also flip their similar region
    region_growth: float = 4.0  # that region's geodesic radius: this times the click's distance to its side
    region_offset: float = 1.0  # ... plus this many pixels,
    region_max: float = 1.0  # ... and at most this many box sizes
    logit_clip: float = 16.0  # logits are kept within +-this (float32 sigmoid saturates beyond)
    grid_cap: int = 512  # images at least twice this many pixels per side get their geodesic on a grid
    # coarsened by an integer factor (side // this; block means of the cost), upsampled bilinearly: a click's
    # cost stops growing with the image. 512, not the tool's 256: at 1024 px Dice@5 -0.003 vs the full grid
    # (256: -0.011); every image of the shared set (<= 584 px) is unchanged (issue 17; figures in the README)


DEFAULT_SETTINGS = RefinementSettings()
_CACHE_SIZE = 32  # logit fields kept (one per click prefix), so the next click costs one pass


@dataclass
class _Features:
    gradient: np.ndarray  # HxW, gradient magnitude / its mean in the box
    intensity: np.ndarray  # HxWxC, intensity / its std in the box
    scale: float  # box size in pixels: sqrt(width * height)


def image_features(image: np.ndarray, box: Box, settings: RefinementSettings = DEFAULT_SETTINGS) -> _Features:
    """Gradient and intensity normalised by their spread inside the box, so the weights are unitless."""
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    smooth = ndimage.gaussian_filter(img, (settings.feature_blur, settings.feature_blur, 0))
    gy = ndimage.sobel(smooth, 0) / 8.0
    gx = ndimage.sobel(smooth, 1) / 8.0
    gradient = np.sqrt((gx**2 + gy**2).sum(-1))
    h, w = gradient.shape
    y1, y2 = int(np.clip(box.y1, 0, h - 1)), int(np.clip(box.y2, 0, h - 1))
    x1, x2 = int(np.clip(box.x1, 0, w - 1)), int(np.clip(box.x2, 0, w - 1))
    inside = (slice(y1, y2 + 1), slice(x1, x2 + 1))
    gradient = gradient / (float(gradient[inside].mean()) + 1e-6)
    spread = float(smooth[inside].reshape(-1, smooth.shape[-1]).std(0).mean()) + 1e-6
    scale = float(np.sqrt((x2 - x1 + 1) * (y2 - y1 + 1)))
    return _Features(gradient.astype(np.float32), (smooth / spread).astype(np.float32), scale)


def geodesic_distance(cost: np.ndarray, starts) -> np.ndarray:
    """Minimum accumulated cost from ``starts`` ((row, col) or a list of them), 8-connected (scikit-image's
    MCP_Geometric)."""
    from skimage.graph import MCP_Geometric

    starts = [starts] if isinstance(starts, tuple) else list(starts)
    distances, _ = MCP_Geometric(cost, fully_connected=True).find_costs(starts)
    return distances


def capped_geodesic(cost: np.ndarray, starts: Sequence[tuple[int, int]], step: int) -> np.ndarray:
    """``geodesic_distance`` on a grid ``step`` times coarser (the cost's block means; distances in full-grid
    pixels), bilinearly upsampled back to the cost's shape. ``step`` 1 is the exact full-grid distance."""
    if step <= 1:
        return geodesic_distance(cost, starts)
    h, w = cost.shape
    hc, wc = -(-h // step), -(-w // step)
    padded = np.pad(cost, ((0, hc * step - h), (0, wc * step - w)), mode="edge")
    coarse = padded.reshape(hc, step, wc, step).mean(axis=(1, 3))
    distance = geodesic_distance(coarse, [(r // step, c // step) for r, c in starts]) * step
    return _upsample_linear(distance.astype(np.float32), (h, w), step)


def _upsample_linear(grid: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Bilinear upsampling of a grid of ``step`` x ``step`` block values (sampled at the blocks' centres)."""
    out = grid
    for axis, size in enumerate(shape):
        position = np.clip((np.arange(size) - (step - 1) / 2) / step, 0, grid.shape[axis] - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, grid.shape[axis] - 1)
        weight = (position - low).astype(np.float32)
        weight = weight[:, None] if axis == 0 else weight[None, :]
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, high, axis=axis) * weight
    return out


def _distance_to(region: np.ndarray, y: int, x: int, default: float) -> float:
    """Euclidean distance from (y, x) to the nearest pixel of ``region`` (``default`` when it is empty); what
    ``distance_transform_edt(~region)[y, x]`` gives, without a pass over the whole image."""
    ys, xs = np.nonzero(region)
    if not len(ys):
        return default
    return float(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2).min()))


def apply_click(logits: np.ndarray, click: Point, features: _Features,
                settings: RefinementSettings = DEFAULT_SETTINGS, earlier: Sequence[Point] = ()) -> np.ndarray:
    """One click's correction of the logit field (a new array; ``logits`` is left as it is). ``earlier`` are the
    clicks before it: ground geodesically nearer to one of the other sign is left to it."""
    out = logits.copy()
    h, w = out.shape
    y = int(np.clip(round(click.y), 0, h - 1))
    x = int(np.clip(round(click.x), 0, w - 1))
    sign = 1.0 if click.positive else -1.0
    margin = settings.margin if click.positive else settings.negative_margin
    shift = margin - sign * float(out[y, x])
    if shift <= 0:  # already on the clicked side with the margin
        return out
    structural = shift >= settings.structural_shift
    if structural or not click.positive:  # the click's depth in the wrong region: its distance to its side
        to_side = _distance_to((out > 0) == click.positive, y, x, features.scale)
    reach = settings.reach * features.scale * np.sqrt(settings.big_shift / max(shift, settings.big_shift))
    if not click.positive:
        reach = min(reach, settings.negative_depth * to_side + settings.negative_depth_offset)
    reach = max(reach, 1.0)
    radius = settings.window * reach
    if structural:
        grow = min(settings.region_growth * to_side + settings.region_offset, settings.region_max * features.scale)
        grow = max(grow, 1.0)
        radius = max(radius, grow)
    r = int(np.ceil(radius)) + 1
    y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
    difference = _difference(features, (y0, y1, x0, x1), (y, x), settings)
    cost = 1.0 + settings.edge_weight * features.gradient[y0:y1, x0:x1] + settings.intensity_weight * difference
    step = max(1, max(h, w) // settings.grid_cap)
    distance = capped_geodesic(cost, [(y - y0, x - x0)], step)
    bump = np.exp(-0.5 * (distance / reach) ** 2) * np.exp(-0.5 * (difference / settings.similarity) ** 2)
    opposite = [(int(round(p.y)) - y0, int(round(p.x)) - x0) for p in earlier
                if p.positive != click.positive and y0 <= round(p.y) < y1 and x0 <= round(p.x) < x1]
    nearer_opposite = distance >= capped_geodesic(cost, opposite, step) if opposite else None
    if nearer_opposite is not None:
        bump[nearer_opposite] = 0.0
    window = out[y0:y1, x0:x1]
    window += sign * shift * bump
    if structural:
        region = distance < grow
        if nearer_opposite is not None:
            region &= ~nearer_opposite
        window[region] = sign * np.maximum(sign * window[region], margin)
    out[y, x] = sign * max(sign * out[y, x], margin)  # exact at the click, whatever the rounding
    np.clip(out, -settings.logit_clip, settings.logit_clip, out=out)
    return out


def _difference(features: _Features, window: tuple[int, int, int, int], at: tuple[int, int],
                settings: RefinementSettings) -> np.ndarray:
    """|I - I(click)| in ``window``, summed over channels (the engine's images are grey or colour RGB), in
    units of the box's intensity spread; the clicked intensity is the mean of a small patch, so one noisy pixel
    does not decide it."""
    y0, y1, x0, x1 = window
    y, x = at
    k = settings.click_patch
    clicked = features.intensity[max(0, y - k) : y + k + 1, max(0, x - k) : x + k + 1]
    clicked = clicked.reshape(-1, clicked.shape[-1]).mean(0)
    return np.abs(features.intensity[y0:y1, x0:x1] - clicked).sum(-1)


class ClickRefiner:
    """Applies clicks to a box's logit field in order, keeping the fields of recent click prefixes."""

    def __init__(self, settings: RefinementSettings = DEFAULT_SETTINGS, cache_size: int = _CACHE_SIZE):
        self.settings = settings
        self.cache_size = cache_size
        self._fields: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._features: OrderedDict[tuple, _Features] = OrderedDict()

    def refine(self, image: np.ndarray, logits: np.ndarray, box: Box, clicks: Sequence[Point],
               key: str = "") -> np.ndarray:
        """The refined logit field (image resolution) after ``clicks``; ``key`` names the image and box's
        logits (e.g. the image's content key), so cached fields are only reused for the same inputs."""
        base_key = (key, tuple(box.as_list()), logits.shape)
        clicks = [Point(float(c.x), float(c.y), bool(c.positive)) for c in clicks]
        done, field = 0, np.clip(logits, -self.settings.logit_clip, self.settings.logit_clip).astype(np.float32)
        if key:
            for n in range(len(clicks), 0, -1):
                cached = self._fields.get(base_key + (tuple(clicks[:n]),))
                if cached is not None:
                    self._fields.move_to_end(base_key + (tuple(clicks[:n]),))
                    done, field = n, cached
                    break
        if done < len(clicks):
            features = self._features_for(image, box, base_key if key else None)
            for n in range(done, len(clicks)):
                field = apply_click(field, clicks[n], features, self.settings, clicks[:n])
                if key:
                    self._remember(base_key + (tuple(clicks[: n + 1]),), field)
        return field

    def _features_for(self, image: np.ndarray, box: Box, key: Optional[tuple]) -> _Features:
        if key is not None and key in self._features:
            return self._features[key]
        features = image_features(image, box, self.settings)
        if key is not None:
            self._features[key] = features
            if len(self._features) > 4:
                self._features.popitem(last=False)
        return features

    def _remember(self, key: tuple, field: np.ndarray) -> None:
        self._fields[key] = field
        if len(self._fields) > self.cache_size:
            self._fields.popitem(last=False)


def refine_with_clicks(refiner: ClickRefiner, image: np.ndarray, logits: np.ndarray, score: float,
                       full_logits: np.ndarray, box: Box, clicks: Sequence[Point], key: str = "") -> Prediction:
    """The box's prediction corrected by ``clicks`` (all clicks since that box, oldest first); ``logits`` and
    ``score`` are the box's low-resolution logits and confidence, kept as they are."""
    field = refiner.refine(image, full_logits, box, clicks, key)
    return Prediction(mask=field > 0, logits=logits, score=score, candidates=[],
                      probability=probability(field))
