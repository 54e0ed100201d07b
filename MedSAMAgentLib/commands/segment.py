"""``medsam-agent segment``: one image (or one slice of a volume), your prompts, one mask."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..actions import Box, Point
from ..images import load_image_2d
from . import add_tool_arguments, tool_from_args
from ..render import save_mask_png


class _Prompt(argparse.Action):
    """Collects --box and --point in the order given (order matters: a box restarts the mask)."""

    def __call__(self, parser, namespace, values, option_string=None):
        prompts = getattr(namespace, "prompts", None) or []
        if option_string == "--box":
            try:
                prompts.append(Box(*[float(v) for v in values]))
            except ValueError:
                parser.error(f"--box takes four numbers X1 Y1 X2 Y2, got {' '.join(values)}")
        else:
            x, y, sign = values
            if sign not in ("pos", "neg"):
                parser.error(f"--point takes X Y pos|neg, got {' '.join(values)}")
            try:
                prompts.append(Point(float(x), float(y), sign == "pos"))
            except ValueError:
                parser.error(f"--point takes two numbers then pos|neg, got {' '.join(values)}")
        namespace.prompts = prompts


def _slice_spec(text: str) -> tuple[int, int]:
    try:
        axis, index = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slice takes AXIS:INDEX (e.g. 0:42), got {text!r}") from None
    return axis, index


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="segment one image from boxes and clicks",
                                   description="Segment one image (or one slice of a volume) from your prompts, "
                                   "applied in the order given. Pixel coordinates: X = column, Y = row.")
    parser.add_argument("image", help="2D image (npy, png, jpg) or volume (nii.gz, nrrd) with --slice")
    parser.add_argument("--slice", type=_slice_spec, help="AXIS:INDEX of the slice to segment in a volume")
    parser.add_argument("--modality", default=None, help="CT windows intensities; others use percentiles")
    parser.add_argument("--box", nargs=4, metavar=("X1", "Y1", "X2", "Y2"), action=_Prompt)
    parser.add_argument("--point", nargs=3, metavar=("X", "Y", "pos|neg"), action=_Prompt)
    add_tool_arguments(parser)
    parser.add_argument("--out", required=True, help="output mask (.png or .npy)")
    parser.set_defaults(func=run, prompts=None)


def run(args: argparse.Namespace) -> int:
    if not args.prompts:
        raise ValueError("give at least one --box or --point")
    image, mapping = load_image_2d(args.image, args.slice, modality=args.modality)
    h, w = image.shape[:2]
    for prompt in args.prompts:
        xs = [prompt.x1, prompt.x2] if isinstance(prompt, Box) else [prompt.x]
        ys = [prompt.y1, prompt.y2] if isinstance(prompt, Box) else [prompt.y]
        if min(xs) < 0 or max(xs) > w - 1 or min(ys) < 0 or max(ys) > h - 1:
            raise ValueError(f"prompt {prompt} lies outside the {w}x{h} image")
    tool = tool_from_args(args)
    tool.set_image(image)
    prediction = None
    for i in range(len(args.prompts)):
        prediction = tool.predict(args.prompts[: i + 1], prediction)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, prediction.mask)
    else:
        save_mask_png(prediction.mask, out)
    where = f" (slice {mapping.axis}:{mapping.index})" if mapping else ""
    print(f"wrote {out}: {int(prediction.mask.sum())} foreground pixels of {w}x{h}{where}, "
          f"confidence {prediction.score:.2f}")
    return 0
