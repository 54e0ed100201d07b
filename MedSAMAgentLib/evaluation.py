"""Evaluation over a manifest: the click protocol (a tool alone under the oracle) and the agent protocol
(a policy proposing, the simulated clinician reviewing), with one summary format for every tool and policy.

- ``clicks``: the ground-truth box, then the standard corrective click (``policies.oracle.corrective_click``)
  up to ``interactions`` in all, never stopping early (a perfect mask just keeps its score). Reports Dice/IoU
  after each interaction (index 0 = the box), NoC@85/90 (AGENT_PROTOCOL.md, "Metrics") and timings.
- ``agent``: ``Session.run`` with ``reviewers.SimulatedClinician`` until stop or the action limit; a policy
  that ``needs_hint`` starts from the clinician's hint. Reports the final Dice/IoU, the agent's and the
  clinician's box/point actions (stop not counted) and the share of proposals the clinician accepted. Then
  the clinician's effort: the episode goes on (same session, same reviewer) up to ``effort_steps`` box/point
  actions in all, and ``clinician_noc85/90`` count the clinician's actions (the hint, overrides and
  corrections; an accept costs none) until IoU first reaches 0.85 / 0.90, ``effort_steps`` (20) when it does
  not (``metrics.clinician_effort``). Next to them, the clinician alone on the same cases (the click protocol
  run with the same tool: ``alone_noc85/90`` and ``alone_dice_at_steps``, its Dice after as many interactions
  as the protocol's action limit). The continuation is not logged and is undone before the episode ends, so
  the trajectory log and the final Dice/IoU are those of the protocol's episode.

Cases are 2D tasks (``manifest.load_case``); rows that name no single target are skipped and listed. Groups
are ``Case.group`` (the id without its last component).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from .actions import Action, Box, Point
from .images import ImageLoadError
from .manifest import Case, LoadedCase, load_case, read_manifest
from .metrics import clinician_effort, dice, iou, number_of_clicks
from .tools.base import SegmentationTool
from .outputs import OutputLock, atomic_path, write_text_atomic
from .trajectory import TrajectoryWriter, prune_episode_images

CLICK_INTERACTIONS = 20  # the box plus 19 clicks (AGENT_PROTOCOL.md: NoC counts at most 20)
AGENT_MAX_STEPS = 5  # the protocol's action limit
EFFORT_STEPS = 20  # the clinician-effort count goes on to this many box/point actions (as NoC: at most 20)
WORST_CASES_SHOWN = 6


@dataclass
class Skipped:
    id: str
    reason: str


@dataclass
class Failed:
    """A case whose episode did not run (policy server down, unusable model output, a tool error): an error of
    the run, listed and counted, never scored."""

    id: str
    group: str
    reason: str


@dataclass
class ClickResult:
    """One case under the click protocol."""

    id: str
    group: str
    shape: tuple[int, int]
    dice: list[float]  # after each interaction; index 0 = the box
    iou: list[float]
    actions: list[Action]
    encode_ms: float  # set_image (the image embedding)
    prompt_ms: list[float]  # each tool.predict call
    final_mask: np.ndarray = field(repr=False, default=None)

    @property
    def noc85(self) -> int:
        return number_of_clicks(self.iou, 0.85)

    @property
    def noc90(self) -> int:
        return number_of_clicks(self.iou, 0.90)


@dataclass
class AgentResult:
    """One case under the agent protocol."""

    id: str
    group: str
    shape: tuple[int, int]
    final_dice: float
    final_iou: float
    agent_actions: int
    clinician_actions: int
    proposals: int
    accepted: int
    status: str
    actions: list[Action]
    final_mask: np.ndarray = field(repr=False, default=None)
    reason: str = ""  # why a paused episode paused
    clinician_noc85: Optional[int] = None  # the clinician's actions until IoU 0.85 (None: not measured)
    clinician_noc90: Optional[int] = None
    alone_noc85: Optional[int] = None  # the clinician alone (click protocol) on the same case
    alone_noc90: Optional[int] = None
    alone_dice_at_steps: Optional[float] = None  # the clinician alone after max_steps interactions


# -- cases ----------------------------------------------------------------------------------------------------
def load_cases(cases: Iterable[Case], limit: Optional[int] = None) -> tuple[list[LoadedCase], list[Skipped]]:
    """The evaluable 2D tasks of ``cases`` (at most ``limit``) and the rows skipped, with why."""
    loaded: list[LoadedCase] = []
    skipped: list[Skipped] = []
    for case in cases:
        if limit is not None and len(loaded) >= limit:
            break
        if not case.single_target:
            skipped.append(Skipped(case.id, "the mask holds several labels and the row names none"))
            continue
        try:
            task = load_case(case)
        except (ImageLoadError, FileNotFoundError, OSError, ValueError) as error:
            skipped.append(Skipped(case.id, f"cannot load: {error}"))
            continue
        if not task.ground_truth.any():
            skipped.append(Skipped(case.id, "the ground truth is empty"))
            continue
        loaded.append(task)
    return loaded, skipped


def _progress(items: Sequence, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)


# -- the click protocol ---------------------------------------------------------------------------------------
def run_clicks(task: LoadedCase, tool: SegmentationTool, interactions: int = CLICK_INTERACTIONS) -> ClickResult:
    """Box, then oracle clicks, on one case; the tool is called directly (``tool.predict``)."""
    from .policies.oracle import corrective_click, gt_box

    gt = task.ground_truth
    start = time.perf_counter()
    tool.set_image(task.image)
    encode_ms = (time.perf_counter() - start) * 1000
    actions: list[Action] = [gt_box(gt)]
    prompt_ms: list[float] = []
    start = time.perf_counter()
    prediction = tool.predict(actions, None)
    prompt_ms.append((time.perf_counter() - start) * 1000)
    dices, ious = [dice(prediction.mask, gt)], [iou(prediction.mask, gt)]
    for _ in range(interactions - 1):
        click = corrective_click(prediction.mask, gt)
        if click is not None:  # None: the mask is exact; it keeps its score
            actions.append(click)
            start = time.perf_counter()
            prediction = tool.predict(actions, prediction)
            prompt_ms.append((time.perf_counter() - start) * 1000)
        dices.append(dice(prediction.mask, gt))
        ious.append(iou(prediction.mask, gt))
    return ClickResult(task.case.id, task.case.group, gt.shape, dices, ious, actions, encode_ms, prompt_ms,
                       prediction.mask.copy())


def _guarded(task: LoadedCase, run: Callable[[], Any]):
    """``run()``, or a ``Failed`` record when the case could not be run (a tool or policy error)."""
    from .policies.base import PolicyError
    from .tools.base import ToolError

    try:
        return run()
    except (ToolError, PolicyError, ImageLoadError) as error:
        return Failed(task.case.id, task.case.group, str(error) or type(error).__name__)


def evaluate_clicks(tasks: Sequence[LoadedCase], tool: SegmentationTool, interactions: int = CLICK_INTERACTIONS,
                    progress: bool = True, results: Optional[list] = None) -> list:
    """Each case's ``ClickResult`` (or ``Failed``), appended to ``results`` as it finishes (so an
    interrupted run keeps the finished ones)."""
    results = [] if results is None else results
    for task in _progress(tasks, "clicks", progress):
        results.append(_guarded(task, lambda: run_clicks(task, tool, interactions)))
    return results


def summarize_clicks(results: Sequence[ClickResult]) -> dict[str, Any]:
    """Means over cases: Dice/IoU after each interaction, NoC@85/90, median timings."""
    if not results:
        return {"n": 0}
    prompts = [ms for r in results for ms in r.prompt_ms]
    return {
        "n": len(results),
        "dice_at": [round(float(v), 4) for v in np.mean([r.dice for r in results], axis=0)],
        "iou_at": [round(float(v), 4) for v in np.mean([r.iou for r in results], axis=0)],
        "noc85": round(float(np.mean([r.noc85 for r in results])), 3),
        "noc90": round(float(np.mean([r.noc90 for r in results])), 3),
        "median_ms_per_prompt": round(float(np.median(prompts)), 2),
        "median_ms_per_image": round(float(np.median([r.encode_ms for r in results])), 2),
    }


# -- the agent protocol ---------------------------------------------------------------------------------------
PolicyFactory = Callable[[LoadedCase], Any]  # a fresh policy for one case (oracle policies read its truth)


def run_agent(task: LoadedCase, tool: SegmentationTool, policy, max_steps: int = AGENT_MAX_STEPS,
              seed: int = 0, log: Optional[TrajectoryWriter] = None,
              manifest: Optional[str | Path] = None, effort_steps: int = EFFORT_STEPS) -> AgentResult:
    """One episode: the policy proposes, the simulated clinician reviews, until stop or the limit. With a
    ``log``, the episode is written to it step by step and ended with its scores (not marked accepted: the
    reviewer was simulated). With ``effort_steps`` (0: off) the episode then goes on to that many actions
    for the clinician-effort count, and the click protocol runs on the case for the clinician alone."""
    from .reviewers import SimulatedClinician
    from .session import Session

    gt = task.ground_truth
    reviewer = SimulatedClinician(gt, seed=seed)
    meta: dict[str, Any] = {"case_id": task.case.id, "source": "medsam-agent evaluate"}
    if manifest is not None:
        meta["manifest"] = str(Path(manifest).resolve())
    session = Session(tool, policy, task.image, target=task.case.target, ground_truth=gt, max_actions=max_steps,
                      log=log, meta=meta)
    if getattr(policy, "needs_hint", False):
        session.place(reviewer.hint(), hint=True)
    try:
        status = session.run(reviewer)
        reviewed = [s for s in session.steps if s.proposal is not None]
        result = AgentResult(
            task.case.id, task.case.group, gt.shape, dice(session.mask, gt), iou(session.mask, gt),
            session.agent_actions, session.clinician_actions, len(reviewed),
            sum(1 for s in reviewed if s.decision == "accept"), status, list(session.actions),
            session.mask.copy(), reason=session.pause_reason if status == "paused" else "",
        )
        if effort_steps and status != "paused":
            applied = _continue_for_effort(session, reviewer, effort_steps)
            result.clinician_noc85 = clinician_effort(applied, 0.85, effort_steps)
            result.clinician_noc90 = clinician_effort(applied, 0.90, effort_steps)
    except KeyboardInterrupt:
        session.finish(accepted=False, status="interrupted")
        raise
    session.finish(accepted=False, status=status)
    if effort_steps and status != "paused":
        alone = run_clicks(task, tool, max(effort_steps, max_steps))
        result.alone_noc85, result.alone_noc90 = alone.noc85, alone.noc90
        result.alone_dice_at_steps = alone.dice[max_steps - 1]
    return result


def _continue_for_effort(session, reviewer, effort_steps: int) -> list[tuple[bool, float]]:
    """The episode's applied box/point actions ``(by_clinician, iou)`` when it goes on past the protocol's
    limit (the clinician keeps correcting, the agent keeps proposing) until IoU 0.90, a stop the clinician
    accepts, or ``effort_steps`` actions. The continuation is unlogged and undone: the session is left as the
    protocol's episode ended."""
    limit, log, first = session.max_actions, session.log, len(session.steps)
    session.max_actions, session.log = max(limit, effort_steps), None
    try:
        while not session.stopped and not session.at_limit:
            if any((s.iou or 0.0) >= 0.90 for s in session.steps):
                break
            if session.run(reviewer, max_proposals=1) == "paused":
                break
        return [(s.actor == "clinician", s.iou or 0.0) for s in session.steps if isinstance(s.applied, (Box, Point))]
    finally:
        session.undo(len(session.steps) - first)
        session.max_actions, session.log = limit, log


def evaluate_agent(tasks: Sequence[LoadedCase], tool: SegmentationTool, policy_factory: PolicyFactory,
                   max_steps: int = AGENT_MAX_STEPS, progress: bool = True,
                   log: Optional[TrajectoryWriter] = None, manifest: Optional[str | Path] = None,
                   results: Optional[list] = None, effort_steps: int = EFFORT_STEPS) -> list:
    """Each case's ``AgentResult``, or ``Failed`` when its episode did not run: the policy paused (server
    down, unusable answers) or a tool or policy error was raised. Appended to ``results`` as they finish."""
    results = [] if results is None else results
    for task in _progress(tasks, "agent", progress):
        result = _guarded(task, lambda: run_agent(task, tool, policy_factory(task), max_steps, log=log,
                                                  manifest=manifest, effort_steps=effort_steps))
        if isinstance(result, AgentResult) and result.status == "paused":
            result = Failed(result.id, result.group, f"the policy paused: {result.reason}")
        results.append(result)
    return results


def summarize_agent(results: Sequence[AgentResult]) -> dict[str, Any]:
    if not results:
        return {"n": 0}
    proposals = sum(r.proposals for r in results)
    return {
        "n": len(results),
        "final_dice": round(float(np.mean([r.final_dice for r in results])), 4),
        "final_iou": round(float(np.mean([r.final_iou for r in results])), 4),
        "mean_agent_actions": round(float(np.mean([r.agent_actions for r in results])), 3),
        "mean_clinician_actions": round(float(np.mean([r.clinician_actions for r in results])), 3),
        "acceptance_rate": round(sum(r.accepted for r in results) / proposals, 4) if proposals else None,
        **_effort_block(results),
    }


def _effort_block(results: Sequence[AgentResult]) -> dict[str, Any]:
    """Means of the clinician-effort fields over the cases that measured them (none: nothing)."""
    block: dict[str, Any] = {}
    for key in ("clinician_noc85", "clinician_noc90", "alone_noc85", "alone_noc90", "alone_dice_at_steps"):
        values = [getattr(r, key) for r in results if getattr(r, key) is not None]
        if values:
            block[key] = round(float(np.mean(values)), 4 if key.endswith("steps") else 3)
    return block


# -- summary and report ---------------------------------------------------------------------------------------
def summarize(results: Sequence, protocol: str, tool: str, policy: Optional[str] = None,
              skipped: Sequence[Skipped] = (), planned: Optional[int] = None) -> dict[str, Any]:
    """``{"protocol", "tool", "policy", "overall", "groups", "skipped", "errors", "partial"}``, blocks as
    ``summarize_<protocol>`` over the measured cases only; ``Failed`` results are listed under ``errors``.
    ``partial`` is true when fewer than ``planned`` cases finished (an interrupted run)."""
    block = summarize_clicks if protocol == "clicks" else summarize_agent
    measured = [r for r in results if not isinstance(r, Failed)]
    failed = [r for r in results if isinstance(r, Failed)]
    groups: dict[str, list] = {}
    for result in measured:
        groups.setdefault(result.group, []).append(result)
    summary = {
        "protocol": protocol,
        "tool": tool,
        "policy": policy,
        "overall": block(measured),
        "groups": {name: block(members) for name, members in sorted(groups.items())},
        "skipped": [{"id": s.id, "reason": s.reason} for s in skipped],
        "errors": [{"id": f.id, "reason": f.reason} for f in failed],
        "partial": planned is not None and len(results) < planned,
    }
    if summary["partial"]:
        summary["finished_cases"], summary["planned_cases"] = len(results), planned
    return summary


def _case_rows(results: Sequence) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if isinstance(r, Failed):
            continue
        row: dict[str, Any] = {"id": r.id, "group": r.group, "height": r.shape[0], "width": r.shape[1]}
        if isinstance(r, ClickResult):
            row.update(noc85=r.noc85, noc90=r.noc90, encode_ms=round(r.encode_ms, 1),
                       median_prompt_ms=round(float(np.median(r.prompt_ms)), 1))
            row.update({f"dice_{i}": round(v, 4) for i, v in enumerate(r.dice)})
            row.update({f"iou_{i}": round(v, 4) for i, v in enumerate(r.iou)})
        else:
            row.update(final_dice=round(r.final_dice, 4), final_iou=round(r.final_iou, 4),
                       agent_actions=r.agent_actions, clinician_actions=r.clinician_actions,
                       proposals=r.proposals, accepted=r.accepted, status=r.status,
                       clinician_noc85=r.clinician_noc85, clinician_noc90=r.clinician_noc90,
                       alone_noc85=r.alone_noc85, alone_noc90=r.alone_noc90,
                       alone_dice_at_steps=None if r.alone_dice_at_steps is None else round(r.alone_dice_at_steps, 4))
        rows.append(row)
    return rows


def write_report(out: str | Path, summary: dict[str, Any], results: Sequence,
                 tasks: Optional[Sequence[LoadedCase]] = None) -> dict[str, Path]:
    """summary.json, cases.csv and the PNG plots under ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "cases": out / "cases.csv"}
    results = [r for r in results if not isinstance(r, Failed)]
    rows = _case_rows(results)
    with atomic_path(paths["cases"]) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if summary["protocol"] == "clicks" and results:
        paths["curves"] = out / "dice_vs_interactions.png"
        with atomic_path(paths["curves"]) as temporary:
            plot_curves(summary, temporary)
    if tasks is not None and results:
        paths["worst"] = out / "worst_cases.png"
        with atomic_path(paths["worst"]) as temporary:
            plot_worst(results, tasks, temporary)
    write_text_atomic(paths["summary"], json.dumps(summary, indent=2) + "\n")  # last: it vouches for the rest
    return paths


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Mean Dice against interactions, one line per group and the overall mean in black."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, block in summary["groups"].items():
        ax.plot(range(1, len(block["dice_at"]) + 1), block["dice_at"], marker=".", lw=1,
                label=f"{name} (n={block['n']})")
    overall = summary["overall"]["dice_at"]
    ax.plot(range(1, len(overall) + 1), overall, color="black", lw=2.5, label="overall")
    ax.set_xlabel("interactions (1 = the box)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, len(overall) + 1))
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary['tool']}: click protocol")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_worst(results: Sequence, tasks: Sequence[LoadedCase], path: Path,
               count: int = WORST_CASES_SHOWN) -> None:
    """The cases with the lowest final Dice: the ground truth's outline (yellow) over the final mask."""
    from scipy import ndimage

    from .render import overlay

    plt = _pyplot()
    by_id = {t.case.id: t for t in tasks}
    final = [(r.dice[-1] if isinstance(r, ClickResult) else r.final_dice, r) for r in results]
    worst = sorted(final, key=lambda item: item[0])[:count]
    fig, axes = plt.subplots(1, len(worst), figsize=(3.2 * len(worst), 3.6), dpi=110, squeeze=False)
    for ax, (score, result) in zip(axes[0], worst):
        task = by_id[result.id]
        picture = np.asarray(overlay(task.image, result.final_mask, result.actions, scale=1))
        gt_edge = task.ground_truth & ~ndimage.binary_erosion(task.ground_truth)
        picture = picture.copy()
        picture[gt_edge] = (255, 230, 0)
        ax.imshow(picture)
        ax.set_title(f"{result.id.split('/', 1)[-1][:28]}\nDice {score:.2f}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- one call for the command and the benchmarks --------------------------------------------------------------
def evaluate_manifest(manifest: str | Path, protocol: str, out: Optional[str | Path] = None, *,
                      tool: Optional[SegmentationTool] = None, tool_name: str = "litemedsam",
                      checkpoint: Optional[str] = None, policy: Any = None, policy_name: Optional[str] = None,
                      max_steps: int = AGENT_MAX_STEPS, limit: Optional[int] = None,
                      interactions: int = CLICK_INTERACTIONS, progress: bool = True,
                      effort_steps: int = EFFORT_STEPS) -> dict[str, Any]:
    """Load the manifest's cases, run ``protocol``, write the report under ``out`` (if given); the summary.

    Agent protocol: ``policy`` is a policy already made (a large model loads once; each session resets it),
    else ``policy_name`` (default builtin) is made from the registry — per case for the oracle, which reads
    each case's ground truth. With ``out``, every episode goes to ``out/trajectories.jsonl`` as it happens."""
    from .registry import DEFAULT_POLICY, make_policy, make_tool

    if protocol not in ("clicks", "agent"):
        raise ValueError(f"unknown protocol {protocol!r}; choose clicks or agent")
    lock = None if out is None else OutputLock(out, "evaluate").acquire()  # refuses a read-only or busy folder
    try:
        tasks, skipped = load_cases(read_manifest(manifest), limit)
        if not tasks:
            raise ValueError(f"{manifest}: no evaluable 2D cases")
        if tool is None:
            tool = make_tool(tool_name, checkpoint=checkpoint)
        results: list = []
        log_path = None if out is None else Path(out) / "trajectories.jsonl"
        partial_log = None if log_path is None else log_path.with_name(log_path.name + ".partial")
        interrupted = False
        try:
            if protocol == "clicks":
                evaluate_clicks(tasks, tool, interactions, progress, results=results)
            else:
                if policy is None:
                    policy_name = policy_name or DEFAULT_POLICY
                    if policy_name != "oracle":
                        policy = make_policy(policy_name)
                policy_name = policy.name if policy is not None else policy_name

                def factory(task: LoadedCase):
                    return policy or make_policy("oracle", ground_truth=task.ground_truth, seed=0)

                log = None if partial_log is None else _fresh_log(partial_log)
                try:
                    evaluate_agent(tasks, tool, factory, max_steps, progress, log=log, manifest=manifest,
                                   results=results, effort_steps=effort_steps)
                finally:
                    if log is not None:
                        log.close()
        except KeyboardInterrupt:  # report what finished, marked partial, then stop as asked
            interrupted = True
        summary = summarize(results, protocol, getattr(tool, "name", str(tool_name)), policy_name, skipped,
                            planned=len(tasks))
        if out is not None:
            if partial_log is not None and partial_log.exists():
                os.replace(partial_log, log_path)  # this run's log replaces the earlier run's only now
                prune_episode_images(log_path)
            write_report(out, summary, results, tasks)
        if interrupted:
            if out is not None:
                print(f"interrupted: partial summary of {len(results)} of {len(tasks)} cases written to "
                      f"{Path(out) / 'summary.json'}", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        return summary
    finally:
        if lock is not None:
            lock.release()


def _fresh_log(path: Path) -> TrajectoryWriter:
    """A new (partial) log for this run; the earlier run's log and images stay until this run has its own
    (``prune_episode_images`` then drops the images no episode of the new log names)."""
    path.unlink(missing_ok=True)  # only ever an interrupted run's unfinished log
    return TrajectoryWriter(path)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table, one line per group and the overall line last."""
    lines = []
    blocks = list(summary["groups"].items()) + [("overall", summary["overall"])]
    if not summary["overall"]["n"]:
        lines.append("no case was measured")
    elif summary["protocol"] == "clicks":
        # dice_at[i]: mean Dice after i clicks (index 0 = the box alone)
        lines.append(f"{'group':28s} {'n':>3s} {'box':>6s} {'+1':>6s} {'+3':>6s} {'+5':>6s} {'last':>6s} "
                     f"{'NoC85':>6s} {'NoC90':>6s}")
        for name, b in blocks:
            d = b["dice_at"]
            picks = [d[min(i, len(d) - 1)] for i in (0, 1, 3, 5)] + [d[-1]]
            lines.append(f"{name[:28]:28s} {b['n']:3d} " + " ".join(f"{v:6.3f}" for v in picks)
                         + f" {b['noc85']:6.2f} {b['noc90']:6.2f}")
        o = summary["overall"]
        lines.append(f"median ms per prompt {o['median_ms_per_prompt']:.1f}, per image (embedding) "
                     f"{o['median_ms_per_image']:.1f}")
    else:
        # cNoC: the clinician's actions until IoU 0.85/0.90 with the agent; alone: the click protocol's NoC
        lines.append(f"{'group':28s} {'n':>3s} {'Dice':>6s} {'IoU':>6s} {'agent':>6s} {'clin.':>6s} {'accept':>7s}"
                     f" {'cNoC85':>6s} {'cNoC90':>6s} {'alone85':>7s} {'alone90':>7s} {'aloneD':>6s}")
        for name, b in blocks:
            rate = "-" if b["acceptance_rate"] is None else f"{b['acceptance_rate']:.2f}"
            effort = " ".join(f"{b[k]:{w}.{d}f}" if k in b else f"{'-':>{w}s}" for k, w, d in (
                ("clinician_noc85", 6, 2), ("clinician_noc90", 6, 2), ("alone_noc85", 7, 2), ("alone_noc90", 7, 2),
                ("alone_dice_at_steps", 6, 3)))
            lines.append(f"{name[:28]:28s} {b['n']:3d} {b['final_dice']:6.3f} {b['final_iou']:6.3f} "
                         f"{b['mean_agent_actions']:6.2f} {b['mean_clinician_actions']:6.2f} {rate:>7s} {effort}")
    if summary.get("skipped"):
        lines.append(f"skipped {len(summary['skipped'])}: " + ", ".join(s["id"] for s in summary["skipped"]))
    errors = summary.get("errors") or []
    if errors:
        lines.append(f"ERRORS: {len(errors)} case(s) did not run and are not in the means above:")
        lines += [f"  {e['id']}: {e['reason']}" for e in errors[:10]] + (["  ..."] if len(errors) > 10 else [])
    if summary.get("partial"):
        lines.append(f"PARTIAL: interrupted after {summary['finished_cases']} of {summary['planned_cases']} cases")
    return "\n".join(lines)
