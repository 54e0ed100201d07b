"""SAM2 / MedSAM2 through a volume with the ``sam2`` package's own video predictor: slices are the frames.

This is how MedSAM2 is meant to run on volumes (as SAM2 runs on videos): the key slice's prompt (box,
clicks) makes a conditioning frame, and the memory bank (masks and features of the conditioning frames and
of the last tracked ones) carries the structure to the next slices, forward and backward. The session has
the interface, records, operations and logs of ``propagation.VolumeSession``, so the command line, the
Slicer panel and the browser app take either from ``volume_session_for``.

- Frames come from memory: the per-volume normalised slices (``volumes.Volume``, ``images.normalise_volume``)
  through the 2D tool's own transform (resize to image_size, ImageNet mean/std), made when the predictor
  asks for a frame: nothing is written to disk and no video of the whole volume is held.
- Propagation is ``SAM2VideoPredictor.propagate_in_video`` from the key (or corrected) slice, one direction
  at a time. It ends where SAM2's own object-score head says the structure is absent (an empty mask), at
  the volume's edge, at ``until``, at a clinician's slice, or on ``cancel``.
- A correction (a box or clicks on a slice) is a new prompt on that frame (``add_new_points_or_box``:
  memory-conditioned where the frame was tracked) and the frame becomes a conditioning frame
  (``add_all_frames_to_correct_as_cond``; without it, sam2 1.1.0 recomputes a corrected non-conditioning
  frame from memory on the next propagation and drops the correction). Propagation then runs again from
  that slice onward only: the slices between it and the key slice, and the other direction, keep their masks.
- Every slice is a 2D ``Session`` in the trajectory log. A propagated slice has one agent step: the mask the
  memory gave it, proposed by policy ``sam2-memory`` as the bounding box of that mask, and marked
  ``extra.from_memory`` (no prompt reached SAM2 on that slice; a 2D agent would prompt that box). The
  clinician's prompts are their own steps (a correction is an ``override`` with ``extra.correction``), so
  corrections made in 3D export as 2D expert episodes like any other session.
- Undo restores the predictor's per-frame inputs and outputs as they were before the operation. The
  predictor never changes its stored tensors in place (it replaces them), so a copy of the dicts that hold
  them is an exact snapshot at no tensor cost.

Holes in masks are not filled (``fill_hole_area`` 0): that post-processing needs sam2's CUDA extension, which
the CPU install does not build.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np

from .actions import Action, Box, Point, Stop
from .policies.base import Observation, Proposal
from .propagation import OWNED, Operation, PropagationRun, SliceRecord, VolumeSession, _AcceptAll
from .session import Reviewer
from .tools.base import Prediction, ToolError
from .volumes import Volume

OBJECT_ID = 1  # one structure per volume session
MEMORY_POLICY = "sam2-memory"
# the parts of the predictor's inference state that prompts and propagation change (per object, per frame)
_PER_OBJECT = ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj")
_PER_OBJECT_OUTPUTS = ("output_dict_per_obj", "temp_output_dict_per_obj")
_OUTPUT_KINDS = ("cond_frame_outputs", "non_cond_frame_outputs")
# what ``sam2.build_sam.build_sam2_video_predictor`` sets, less hole filling (CUDA only), plus corrections kept
VIDEO_OPTIONS = {
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 0,
    "add_all_frames_to_correct_as_cond": True,
}


def uses_video_memory(tool: Any) -> bool:
    """SAM2 and MedSAM2 tools (``tools.sam2_tool``) propagate with their own memory."""
    return getattr(tool, "family", None) in ("sam2", "medsam2") and hasattr(tool, "model") and \
        hasattr(tool, "config")


def volume_session_for(tool: Any, volume: Volume, **options: Any) -> VolumeSession:
    """The volume session for ``tool``: SAM2's memory propagation for SAM2 / MedSAM2, the neighbour-prompt
    propagation (``propagation.VolumeSession``) for the others. ``options`` are VolumeSession's."""
    if uses_video_memory(tool):
        return SAM2VolumeSession(tool, volume, **options)
    return VolumeSession(tool, volume, **options)


def video_predictor(tool: Any):
    """The ``SAM2VideoPredictor`` of a SAM2 tool, built once from the tool's own config and sharing its weights
    (``load_state_dict(assign=True)``: the same tensors, no second copy)."""
    cached = getattr(tool, "_video_predictor", None)
    if cached is not None:
        return cached
    import sam2.sam2_video_predictor as video_module
    from tqdm import tqdm

    from .tools.sam2_tool import build_sam2_model, load_config

    cfg = load_config(tool.config, tool.image_size)
    cfg.model._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    for key, value in VIDEO_OPTIONS.items():
        cfg.model[key] = value
    model = build_sam2_model(cfg)
    try:
        model.load_state_dict(tool.model.state_dict(), strict=True, assign=True)
    except RuntimeError as error:
        raise ToolError(f"the {tool.name} weights do not fit sam2's video predictor: {str(error).splitlines()[0]}"
                        ) from None
    model = model.to(tool.device).eval()
    video_module.tqdm = lambda iterable, *args, **kwargs: tqdm(iterable, *args, **{**kwargs, "disable": True})
    tool._video_predictor = model
    return model


class _Frames:
    """The volume's slices as the predictor's frames, transformed when asked for (``inference_state["images"]``
    is only ever indexed by frame and measured)."""

    def __init__(self, volume: Volume, transform: Callable[[np.ndarray], Any]):
        self.volume, self.transform = volume, transform

    def __len__(self) -> int:
        return self.volume.slices

    def __getitem__(self, index: int):
        return self.transform(self.volume.slice_image(int(index)))


def _copy(value: Any) -> Any:
    """The nested dicts and lists of the inference state copied; tensors shared."""
    if isinstance(value, dict):
        return type(value)((k, _copy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class MemoryPolicy:
    """The policy of a slice the memory reached: it proposes the memory's mask (named by its bounding box),
    then stop; the clinician's prompts there are corrections."""

    name = MEMORY_POLICY
    version = "1"
    needs_hint = False

    def __init__(self, box: Box, neighbour_index: int):
        self.box, self.neighbour_index = box, neighbour_index

    def reset(self) -> None:
        pass

    def propose(self, observation: Observation) -> Proposal:
        if observation.prediction is None:
            return Proposal(self.box, f"SAM2's memory carried the structure here from slice {self.neighbour_index} "
                            "(no prompt on this slice); the box is that mask's bounding box", self.name)
        return Proposal(Stop(), "the mask is the memory's", self.name)


class _FrameTool:
    """The 2D tool interface over one frame of the predictor's state, for that slice's ``Session``: prompts go
    to ``add_new_points_or_box`` on the frame; the memory's mask is the answer to the memory step."""

    trained_with_clicks = True

    def __init__(self, owner: "SAM2VolumeSession", index: int):
        self.owner, self.index = owner, index
        self.name, self.version = f"{owner.tool.name}-video", owner.tool.version
        self.memory: Optional[Prediction] = None  # what propagation gave this slice
        self.memory_box: Optional[Box] = None  # the memory step's action (compared by identity)
        self.snapshots: dict[int, dict] = {}  # actions before a call -> the frame's state before it

    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> None:
        pass  # the frame's features come from the predictor's state

    def predict(self, actions, previous: Optional[Prediction]) -> Prediction:
        prompts = [a for a in actions if isinstance(a, (Box, Point))]
        if not prompts:
            raise ToolError("predict needs at least one box or point")
        if self.memory is not None and prompts[0] is self.memory_box:
            prompts = prompts[1:]
            if not prompts:
                return self.memory
        self.snapshots[len(actions) - 1] = self.owner._frame_snapshot(self.index)
        boxes = [i for i, a in enumerate(prompts) if isinstance(a, Box)]
        box = prompts[boxes[-1]] if boxes else None  # a box restarts the frame's prompts, as in the 2D tools
        points = [a for a in prompts[(boxes[-1] + 1 if boxes else 0):] if isinstance(a, Point)]
        return self.owner._prompt_frame(self.index, box, points)


class SAM2VolumeSession(VolumeSession):
    """``VolumeSession`` whose propagation is SAM2's memory (see the module docstring); ``options`` as there
    (``rules`` and ``prefetch`` do not apply: SAM2 reads its own object score and encodes frames as it goes)."""

    bridges = False  # one memory pass from the corrected frame fills a gap: its memory holds both ends

    def __init__(self, tool: Any, volume: Volume, **options: Any):
        options["prefetch"] = 0
        super().__init__(tool, volume, **options)
        self.meta.setdefault("propagation", MEMORY_POLICY)
        self.video = video_predictor(tool)
        self.state = self._new_state()
        self._before: dict[int, dict] = {}  # id(operation) -> the predictor state before it

    # -- the predictor's state ------------------------------------------------------------------------------
    def _new_state(self) -> dict:
        """What ``SAM2VideoPredictor.init_state`` builds (sam2 1.1.0), over frames from memory."""
        device = self.video.device
        height, width = self.volume.slice_shape
        state = {
            "images": _Frames(self.volume, self.tool.predictor._transforms), "num_frames": self.volume.slices,
            "offload_video_to_cpu": False, "offload_state_to_cpu": False, "video_height": height,
            "video_width": width, "device": device, "storage_device": device, "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {}, "cached_features": {}, "constants": {}, "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(), "obj_ids": [], "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
        }
        self.video._obj_id_to_idx(state, OBJECT_ID)  # the object's dicts exist from the start (snapshots)
        return state

    def _snapshot(self) -> dict:
        return {key: _copy(self.state[key]) for key in _PER_OBJECT + _PER_OBJECT_OUTPUTS}

    def _restore(self, snapshot: dict) -> None:
        for key, value in snapshot.items():
            self.state[key] = _copy(value)

    def _frame_snapshot(self, index: int) -> dict:
        snapshot: dict[str, Any] = {key: _copy(self.state[key][0].get(index)) for key in _PER_OBJECT}
        for key in _PER_OBJECT_OUTPUTS:
            snapshot[key] = {kind: _copy(self.state[key][0][kind].get(index)) for kind in _OUTPUT_KINDS}
        return snapshot

    def _restore_frame(self, index: int, snapshot: dict) -> None:
        def put(table: dict, value: Any) -> None:
            if value is None:
                table.pop(index, None)
            else:
                table[index] = _copy(value)

        for key in _PER_OBJECT:
            put(self.state[key][0], snapshot[key])
        for key in _PER_OBJECT_OUTPUTS:
            for kind in _OUTPUT_KINDS:
                put(self.state[key][0][kind], snapshot[key][kind])

    def _output(self, index: int) -> dict:
        """The predictor's latest output on a frame (temporary first, as sam2 itself looks it up)."""
        for key in ("temp_output_dict_per_obj", "output_dict_per_obj"):
            for kind in _OUTPUT_KINDS:
                out = self.state[key][0][kind].get(index)
                if out is not None:
                    return out
        raise ToolError(f"sam2 holds no output for slice {index}")

    def _prediction(self, video_res_masks, index: int) -> Prediction:
        import torch

        logits = video_res_masks[0, 0].float().cpu()
        out = self._output(index)
        low_res = out["pred_masks"][0].float().cpu().numpy().astype(np.float32)
        score = float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])  # SAM2's object presence
        return Prediction(mask=(logits > 0).numpy(), logits=low_res, score=score,
                          probability=torch.sigmoid(logits).numpy())

    def _prompt_frame(self, index: int, box: Optional[Box], points: list[Point]) -> Prediction:
        options: dict[str, Any] = {}
        if points:
            options["points"] = np.array([[p.x, p.y] for p in points], np.float32)
            options["labels"] = np.array([int(p.positive) for p in points], np.int32)
        if box is not None:
            options["box"] = np.array(box.as_list(), np.float32)
        _, _, masks = self.video.add_new_points_or_box(self.state, frame_idx=index, obj_id=OBJECT_ID,
                                                       clear_old_points=True, **options)
        return self._prediction(masks, index)

    def _track(self, start: int, direction: int, count: int):
        """(slice, prediction) from ``start`` (excluded) in ``direction``, at most ``count`` slices."""
        frames = self.video.propagate_in_video(self.state, start_frame_idx=start, max_frame_num_to_track=count,
                                               reverse=direction < 0)
        for index, _, masks in frames:
            if index != start:
                yield index, self._prediction(masks, index)

    # -- the hook of the 2D sessions --------------------------------------------------------------------------
    def _slice_tool(self, index: int) -> _FrameTool:
        return _FrameTool(self, index)

    # -- operations: VolumeSession's, with the predictor's state kept for undo --------------------------------
    def start(self, index: int, action: Action, reviewer: Optional[Reviewer] = None,
              extra: Optional[dict] = None) -> Operation:
        before = self._snapshot()
        operation = super().start(index, action, reviewer, extra)
        self._before[id(operation)] = before
        return operation

    def correct(self, index: int, action: Action, *, repropagate: bool = True,
                extra: Optional[dict] = None) -> list[Operation]:
        before = self._snapshot()  # the runs that follow keep their own (``_propagate``)
        done = super().correct(index, action, repropagate=repropagate, extra=extra)
        self._before[id(done[0])] = before
        return done

    def clear(self, index: int, repropagate: bool = True) -> list[Operation]:
        """No structure on this slice: SAM2 gets an empty mask there (a conditioning frame that says "absent")."""
        before = self._snapshot()
        done = super().clear(index, repropagate)
        self.video.add_new_mask(self.state, index, OBJECT_ID, np.zeros(self.volume.slice_shape, bool))
        self._before[id(done[0])] = before
        return done

    def undo(self) -> Optional[Operation]:
        operation = super().undo()
        if operation is not None:
            before = self._before.pop(id(operation), None)
            if before is not None:
                self._restore(before)
        return operation

    def undo_slice(self, index: int, count: int = 1) -> int:
        session = self.slice_session(index)
        if session is None:
            return 0
        actions = len(session.actions)
        undone = session.undo(count)
        snapshot = session.tool.snapshots.get(len(session.actions))
        if len(session.actions) < actions and snapshot is not None:
            self._restore_frame(index, snapshot)
        return undone

    def close(self) -> None:
        super().close()
        self.state["cached_features"] = {}

    # -- propagation ------------------------------------------------------------------------------------------
    def _propagate(self, start: int, direction: int, *, until: Optional[int] = None,
                   reviewer: Optional[Reviewer] = None, cancel: Optional[Callable[[], bool]] = None,
                   on_slice: Optional[Callable[[SliceRecord], None]] = None, empty_only: bool = False,
                   judged: bool = True) -> Operation:
        """One direction from ``start``; ``empty_only``: only over slices no run reached (VolumeSession's gap
        filling after a correction), stopping at the first slice with a mask. SAM2 has no stop rule to lift
        (``judged``): it stops where its object score says the structure is absent."""
        run = PropagationRun(len(self.runs) + 1, start, direction)
        self.runs.append(run)
        operation = Operation("propagate", run=run)
        self._before[id(operation)] = self._snapshot()
        reviewer = reviewer or _AcceptAll()
        last = (self.volume.slices - 1 if direction > 0 else 0) if until is None else until
        origin, restart = start, True
        while restart:  # one predictor pass; a clinician's prompt on a slice restarts it from there
            restart = False
            frames = self._track(origin, direction, max(0, (last - origin) * direction))
            try:
                while True:
                    if cancel is not None and cancel():
                        run.stop_reason = "cancelled"
                        break
                    began = time.perf_counter()
                    item = next(frames, None)
                    if item is None:
                        run.stop_reason = "volume edge" if until is None else f"reached slice {last}"
                        break
                    k, prediction = item
                    if empty_only and k in self.records:
                        run.stop_reason = f"slice {k} already has a mask"
                        break
                    if k in self.records and self.records[k].origin in OWNED:
                        run.stop_reason = f"slice {k} is the clinician's"
                        break
                    if not prediction.mask.any():
                        run.stop_slice = k
                        run.stop_reason = (f"slice {k}: SAM2 finds no structure here (object score "
                                           f"{prediction.score:.2f})")
                        break
                    record = self._memory_slice(k, direction, prediction, run, reviewer)
                    if record is None:
                        run.stop_reason = f"the clinician rejected slice {k}'s mask"
                        break
                    record.seconds = time.perf_counter() - began
                    operation.before[k] = self.records.get(k)
                    self.records[k] = record
                    run.slices.append(k)
                    if on_slice is not None:
                        on_slice(record)
                    if record.origin == "corrected":
                        origin, restart = k, True
                        break
            finally:
                frames.close()
        self.operations.append(operation)
        return operation

    def _memory_slice(self, k: int, direction: int, prediction: Prediction, run: PropagationRun,
                      reviewer: Reviewer) -> Optional[SliceRecord]:
        """The slice's 2D session: the memory step proposed, then reviewed; None if the clinician rejected it."""
        rows, cols = np.nonzero(prediction.mask)
        box = Box(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))
        session = self._session(k, MemoryPolicy(box, k - direction), "propagated", run=run.id)
        session.tool.memory, session.tool.memory_box = prediction, box
        proposal = session.propose()
        review = reviewer.review(proposal, session.observation())
        marks = {"slice": k, "propagation_run": run.id}
        if review.decision == "reject":
            session.reject(extra=marks)
            session.finish(accepted=False, status="rejected")
            return None
        if review.decision == "override" and review.action is not None:
            session.override(review.action, extra={**marks, "correction": True})
        else:
            session.accept(extra={**marks, "from_memory": True})
        before = len(session.actions)
        session.run(reviewer)
        corrected = review.decision == "override" or len(session.actions) > before
        return SliceRecord(k, session, "corrected" if corrected else "propagated", run.id)
