"""One agent step's segment write in the Slicer panel, on a big segmentation: a 512x512x200 CT-sized reference
volume, 100 segments sharing labelmap layers (as an imported TotalSegmentator result is), "do not overwrite
other segments" on. Target: median <= 50 ms per step.

    .venv/bin/python Testing/benchmarks/bench_slicer_segments.py [--steps 15] [--segments 100]

Each step writes a new mask on one axial slice of the edited segment (``segments.write_slice``: only the
changed region is read and written). Baseline, in the same process: the same step written the
straightforward way, the whole segment through ``slicer.util.updateSegmentBinaryLabelmapFromArray`` after
taking the other segments' voxels out with ``slicer.util.arrayFromSegmentBinaryLabelmap`` per segment.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

import slicer  # noqa: E402

from MedSAMAgentLib.slicer import segments  # noqa: E402
from MedSAMAgentLib.slicer.geometry import slice_geometry  # noqa: E402
from slicer_headless import make_headless_slicer, volume_from_array  # noqa: E402

SHAPE = (200, 512, 512)  # (k, j, i)


def build(env, count: int, rng: np.random.Generator):
    volume = volume_from_array(np.zeros(SHAPE, np.int16), "ct", spacing=(0.8, 0.8, 1.5))
    labels = np.zeros(SHAPE, np.uint8)
    for label in range(1, count + 1):  # 100 organs: blobs spread through the volume
        k, j, i = rng.integers([10, 40, 40], [SHAPE[0] - 30, SHAPE[1] - 90, SHAPE[2] - 90])
        dk, dj, di = rng.integers([5, 15, 15], [25, 60, 60])
        labels[k:k + dk, j:j + dj, i:i + di] = label
    labelmap = slicer.util.addVolumeFromArray(labels, name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(volume)
    segmentation = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    target = segments.ensure_segment(segmentation, volume, name="edited")
    return volume, segmentation, target


def baseline_step(segmentation, target, volume, k: int, mask_slice: np.ndarray) -> None:
    """The whole-volume way: read every other segment whole, write the edited segment whole."""
    whole = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, target, volume).astype(bool)
    whole[k] = mask_slice
    seg = segmentation.GetSegmentation()
    for index in range(seg.GetNumberOfSegments()):
        other = seg.GetNthSegmentID(index)
        if other != target:
            whole &= ~slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, other, volume).astype(bool)
    slicer.util.updateSegmentBinaryLabelmapFromArray(whole.astype(np.uint8), segmentation, target, volume)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--segments", type=int, default=100)
    parser.add_argument("--baseline-steps", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    env = make_headless_slicer()
    volume, segmentation, target = build(env, args.segments, rng)
    print(f"volume {SHAPE[::-1]} (i, j, k), {segmentation.GetSegmentation().GetNumberOfSegments()} segments in "
          f"{segmentation.GetSegmentation().GetNumberOfLayers()} labelmap layers, protection on")
    times = []
    for step in range(args.steps + 1):
        k = int(rng.integers(20, SHAPE[0] - 20))
        geometry = slice_geometry(volume, env.show("Red", volume, ras=_ras_of_slice(volume, k)))
        mask = np.zeros(geometry.shape, bool)
        y, x = rng.integers(100, 400, size=2)
        mask[y - 60:y + 60, x - 80:x + 80] = True
        start = time.perf_counter()
        edit = segments.write_slice(segmentation, target, volume, geometry, mask, protect_other_segments=True)
        elapsed = time.perf_counter() - start
        if step:  # the first write also moves the segment to its own layer (once per session)
            times.append(elapsed)
        assert edit.changed > 0
    median = statistics.median(times)
    base = []
    for _ in range(args.baseline_steps):
        k = int(rng.integers(20, SHAPE[0] - 20))
        mask = np.zeros(SHAPE[1:], bool)
        mask[100:220, 150:310] = True
        start = time.perf_counter()
        baseline_step(segmentation, target, volume, k, mask)
        base.append(time.perf_counter() - start)
    base_median = statistics.median(base)
    print(f"{'write':<34}{'median ms':>10}{'min ms':>9}{'max ms':>9}")
    print(f"{'changed region (write_slice)':<34}{median * 1e3:>10.1f}{min(times) * 1e3:>9.1f}{max(times) * 1e3:>9.1f}")
    print(f"{'whole volume (slicer.util), base':<34}{base_median * 1e3:>10.1f}{min(base) * 1e3:>9.1f}"
          f"{max(base) * 1e3:>9.1f}")
    print(f"speed-up {base_median / median:.1f}x; target median <= 50 ms: {'met' if median <= 0.05 else 'NOT met'}")
    env.close()
    return 0 if median <= 0.05 else 1


def _ras_of_slice(volume, k: int) -> list:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return list(matrix.MultiplyPoint([SHAPE[2] / 2, SHAPE[1] / 2, k, 1.0])[:3])


if __name__ == "__main__":
    sys.exit(main())
