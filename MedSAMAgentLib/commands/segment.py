"""``medsam-agent segment``: one image (or one slice of a volume), your prompts, one mask; with
``--propagate``, the slice's mask carried through the volume (``propagation_sam2.volume_session_for``: SAM2's
own memory for SAM2 / MedSAM2, the neighbour's prompt for the others) and written as a 3D mask with the volume's
geometry; ``--log`` appends every slice's steps (one 2D episode per slice) to a trajectory log."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..actions import Box, Point
from ..images import load_image_2d
from ..outputs import atomic_path
from ..tools.guard import check_inside
from . import add_tool_arguments, tool_from_args
from .options import output_file
from ..render import save_mask_png

VOLUME_MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class _Prompt(argparse.Action):
    """Collects --box and --point in the order given (order matters: a box restarts the mask)."""

    def __call__(self, parser, namespace, values, option_string=None):
        prompts = getattr(namespace, "prompts", None) or []
        if option_string == "--box":
            try:
                prompts.append(Box(*[float(v) for v in values]))
            except ValueError:
                parser.error(f"--box takes four finite numbers X1 Y1 X2 Y2, got {' '.join(values)}")
        else:
            x, y, sign = values
            if sign not in ("pos", "neg"):
                parser.error(f"--point takes X Y pos|neg, got {' '.join(values)}")
            try:
                prompts.append(Point(float(x), float(y), sign == "pos"))
            except ValueError:
                parser.error(f"--point takes two finite numbers then pos|neg, got {' '.join(values)}")
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
    parser.add_argument("--propagate", action="store_true",
                        help="carry the slice's mask through the volume in both directions until the structure "
                             "ends; --out is then a 3D mask (.nii.gz, .nrrd) with the volume's geometry")
    parser.add_argument("--log", metavar="FILE", type=output_file(".jsonl"), default=None,
                        help="with --propagate: append every slice's steps to this trajectory log (.jsonl; one "
                             "2D episode per slice, images next to it)")
    parser.add_argument("--out", required=True, type=output_file(".png", ".npy", *VOLUME_MASK_SUFFIXES),
                        help="output mask (.png or .npy; with --propagate .nii.gz, .nii, .nrrd or .mha)")
    parser.set_defaults(func=run, prompts=None)


def run(args: argparse.Namespace) -> int:
    if not args.prompts:
        raise ValueError("give at least one --box or --point")
    volume_out = args.out.lower().endswith(VOLUME_MASK_SUFFIXES)
    if args.propagate != volume_out:
        raise ValueError("--propagate writes a 3D mask: give both --propagate and an --out ending in "
                         f"{' or '.join(VOLUME_MASK_SUFFIXES)}, or neither")
    if args.propagate:
        return _propagate(args)
    if args.log:
        raise ValueError("--log records the slices of a propagation: give it with --propagate")
    image, mapping = load_image_2d(args.image, args.slice, modality=args.modality)
    h, w = image.shape[:2]
    for prompt in args.prompts:
        check_inside(prompt, h, w)
    tool = tool_from_args(args)
    tool.set_image(image)
    prediction = None
    for i in range(len(args.prompts)):
        prediction = tool.predict(args.prompts[: i + 1], prediction)
    out = Path(args.out)
    with atomic_path(out) as temporary:  # an earlier mask at --out stays whole until this one is complete
        if out.suffix.lower() == ".npy":
            np.save(temporary, prediction.mask)
        else:
            save_mask_png(prediction.mask, temporary)
    where = f" (slice {mapping.axis}:{mapping.index})" if mapping else ""
    print(f"wrote {out}: {int(prediction.mask.sum())} foreground pixels of {w}x{h}{where}, "
          f"confidence {prediction.score:.2f}")
    if prediction.repaired_click:
        print("note: the tool's mask missed the last positive click; the clicked region was added (tools.guard)")
    return 0


def _propagate(args: argparse.Namespace) -> int:
    """Key slice = --slice with the prompts in order, then propagation both ways; a 3D mask written."""
    from ..propagation import describe_operation
    from ..propagation_sam2 import volume_session_for
    from ..trajectory import TrajectoryWriter
    from ..volumes import Volume, write_mask

    if args.slice is None:
        raise ValueError("--propagate needs --slice AXIS:INDEX, the key slice the prompts are on")
    axis, index = args.slice
    volume = Volume.read(args.image, modality=args.modality, axis=axis)
    volume.check_index(index)
    h, w = volume.slice_shape
    for prompt in args.prompts:
        check_inside(prompt, h, w)
    log = TrajectoryWriter(args.log) if args.log else None
    session = volume_session_for(tool_from_args(args), volume, log=log, meta={"source": "segment --propagate"})
    try:
        session.start(index, args.prompts[0])
        for prompt in args.prompts[1:]:
            session.correct(index, prompt, repropagate=False)
        for operation in session.propagate():
            print(describe_operation(operation), flush=True)
        session.finish(accepted=False, status="propagated")  # nobody reviewed the slices: not expert data
    finally:
        session.close()
        if log is not None:
            log.close()
    mask = session.mask()
    write_mask(mask, volume.geometry, args.out)
    slices = sorted(k for k in range(volume.slices) if volume.take(mask, k).any())
    span = f"slices {slices[0]}-{slices[-1]}" if slices else "no slice"
    print(f"wrote {args.out}: {int(mask.sum())} foreground voxels on {len(slices)} slices ({span}) along axis "
          f"{axis}, the volume's geometry" + (f"; every slice's steps in {args.log}" if args.log else ""))
    return 0
