"""Expert trajectories from ground truth (AGENT_PROTOCOL.md, "Expert trajectories").

Each episode is a ``Session`` driven by the ``OracleExpert`` policy whose every proposal is accepted, so it is
logged exactly like an interactive session (records ``episode``/``step``/``end``; decisions ``accept``; the
oracle's stop ends it). Hybrid prompting: the box-to-point paradigm starts from a jittered ground-truth box,
sequential-click from a click in the middle of the target; then corrective clicks, each kept only if it raises
IoU by at least ``tau`` (the oracle previews candidates and resamples), and stop at ``stop_iou``, when no
click helps, or at ``max_steps`` box/point actions.

Layout of ``OUT``:
- ``logs/<case-slug>.jsonl``: one log per case holding all its episodes (written as ``.jsonl.partial`` and
  renamed when every episode has ended, so a finished log is always complete);
- ``images/<case-slug>.png`` and ``masks/<case-slug>.png``: the exact 2D engine image (HxWx3) and its
  ground-truth mask (0/255), referenced from each episode header's ``meta`` as ``image_path`` / ``mask_path``
  (relative to the log's folder) next to ``case_id`` and ``manifest``: exports need nothing else.

Resumable: a rerun keeps every finished log whose episodes match the request and redoes the rest.
Deterministic: each episode's seed comes from (seed, case id, paradigm, episode number), not from the order
or the process it ran in, and every episode runs on one torch thread, so the same seed gives the same files
(whatever ``--workers``) except the wall-clock keys ``created`` and ``timings`` (``TIMING_KEYS``), which stay
in the logs because they are true; compare with ``comparable_records``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from ..manifest import Case, load_case, read_manifest
from ..policies.oracle import OracleExpert, OracleSettings
from ..outputs import OutputLock, atomic_path, write_text_atomic
from ..render import save_mask_png
from ..session import DEFAULT_MAX_ACTIONS, Session
from ..trajectory import TrajectoryWriter, iter_records

PARADIGMS = ("box-to-point", "sequential-click")
TIMING_KEYS = ("created", "timings")  # wall-clock values: the only fields that differ between identical runs
# Torch's CPU results (e.g. the tool's predicted-IoU score) change in the last bits with the thread count, so
# every episode runs on one thread whatever --workers is: the files do not depend on the number of workers.
TORCH_THREADS = 1
SOURCE = "medsam-agent trajectories generate"
_DEFAULTS = OracleSettings()


@dataclass(frozen=True)
class GenerateSettings:
    """What a run generates; the defaults are the oracle's documented defaults and the protocol's 5 steps."""

    paradigms: tuple[str, ...] = ("box-to-point",)
    per_case: int = 1
    seed: int = 0
    jitter: float = _DEFAULTS.jitter
    tau: float = _DEFAULTS.tau
    stop_iou: float = _DEFAULTS.stop_iou
    resample: int = _DEFAULTS.resample
    max_steps: int = DEFAULT_MAX_ACTIONS
    tool: str = "litemedsam"
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.paradigms if p not in PARADIGMS]
        if unknown or not self.paradigms:
            raise ValueError(f"unknown paradigm {unknown or self.paradigms}; choose from {', '.join(PARADIGMS)}")
        if self.per_case < 1:
            raise ValueError(f"--per-case must be at least 1, got {self.per_case}")
        if self.max_steps < 1:
            raise ValueError(f"--max-steps must be at least 1, got {self.max_steps}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"--jitter is a fraction of the box size in [0, 1), got {self.jitter}")
        if not 0 < self.stop_iou <= 1:
            raise ValueError(f"--stop-iou is an IoU in (0, 1], got {self.stop_iou}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"--tau is an IoU gain in [0, 1], got {self.tau}")
        if self.resample < 0:
            raise ValueError(f"--resample must be 0 or more, got {self.resample}")

    def oracle(self, paradigm: str) -> OracleSettings:
        return OracleSettings(jitter=self.jitter, tau=self.tau, stop_iou=self.stop_iou, resample=self.resample,
                              paradigm=paradigm)

    def as_meta(self) -> dict:
        """What identifies the request in each episode header (resume compares it)."""
        data = asdict(self)
        data["paradigms"] = list(self.paradigms)
        data.pop("checkpoint")
        return data


@dataclass
class CaseResult:
    case_id: str
    status: str  # "done", "skipped" (already finished) or "failed"
    episodes: int = 0
    actions: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class GenerateReport:
    out: Path
    results: list[CaseResult] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (case id, why)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def episodes(self) -> int:
        return sum(r.episodes for r in self.results)

    def summary(self) -> str:
        failed = [r for r in self.results if r.status == "failed"]
        lines = [f"{len(self.results)} cases: {self.count('done')} generated, {self.count('skipped')} already "
                 f"finished, {len(failed)} failed; {self.episodes} episodes in {self.out / 'logs'} "
                 f"({self.seconds:.1f} s)"]
        if self.excluded:
            lines.append(f"{len(self.excluded)} manifest rows not used: " +
                         "; ".join(f"{case} ({why})" for case, why in self.excluded[:5]) +
                         (" ..." if len(self.excluded) > 5 else ""))
        lines += [f"  failed {r.case_id}: {r.error}" for r in failed]
        return "\n".join(lines)


# -- naming and seeding -------------------------------------------------------------------------------------
def case_slug(case_id: str) -> str:
    """A file name for a case id: ``medscribble/BTCV/x`` -> ``medscribble__BTCV__x``."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in case_id.replace("/", "__"))
    return safe.strip("._") or hashlib.sha1(case_id.encode()).hexdigest()[:12]


def episode_seed(seed: int, case_id: str, paradigm: str, number: int) -> int:
    """The oracle's seed for one episode: independent of case order and of which worker runs it."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(case_id.encode()), PARADIGMS.index(paradigm), number])
    return int(sequence.generate_state(1)[0])


def episode_id(case_id: str, paradigm: str, number: int, seed: int) -> str:
    return hashlib.sha1(f"{case_id}|{paradigm}|{number}|{seed}".encode()).hexdigest()[:12]


def planned_episodes(settings: GenerateSettings) -> list[tuple[str, int]]:
    return [(paradigm, number) for paradigm in settings.paradigms for number in range(settings.per_case)]


# -- selecting cases ----------------------------------------------------------------------------------------
def select_cases(cases: Iterable[Case], dims: str = "2", include_non_expert: bool = False
                 ) -> tuple[list[Case], list[tuple[str, str]]]:
    """The manifest rows to generate from, and the others with the reason they are left out."""
    chosen, excluded = [], []
    for case in cases:
        if dims != "all" and str(case.dims) != dims:
            excluded.append((case.id, f"{case.dims}D row"))
        elif not case.single_target:
            excluded.append((case.id, "several labels and none named"))
        elif not case.expert_label and not include_non_expert:
            excluded.append((case.id, "label is a model output (expert_label false)"))
        else:
            chosen.append(case)
    return chosen, excluded


# -- one case -----------------------------------------------------------------------------------------------
def log_path(out: Path, case_id: str) -> Path:
    return Path(out) / "logs" / f"{case_slug(case_id)}.jsonl"


def is_finished(path: Path, case_id: str, settings: GenerateSettings) -> bool:
    """True when ``path`` holds exactly the requested episodes of this case, each with its end record."""
    if not path.is_file():
        return False
    wanted = {episode_id(case_id, p, n, settings.seed) for p, n in planned_episodes(settings)}
    started, ended = set(), set()
    try:
        for record in iter_records(path):
            if record.get("type") == "episode":
                meta = record.get("meta", {})
                if meta.get("case_id") != case_id or meta.get("generator") != settings.as_meta():
                    return False
                started.add(record.get("episode_id"))
            elif record.get("type") == "end":
                ended.add(record.get("episode_id"))
    except (OSError, UnicodeDecodeError):
        return False
    return started == wanted and ended == wanted


def run_episode(tool, image: np.ndarray, ground_truth: np.ndarray, target: str, paradigm: str, seed: int,
                settings: GenerateSettings, log: Optional[TrajectoryWriter] = None, *,
                image_key: Optional[str] = None, episode: Optional[str] = None,
                meta: Optional[dict] = None) -> Session:
    """One oracle episode, every proposal accepted, ended by the oracle's stop."""
    policy = OracleExpert(ground_truth, seed=seed, settings=settings.oracle(paradigm))
    session = Session(tool, policy, image, target=target, ground_truth=ground_truth, image_key=image_key,
                      log=log, max_actions=settings.max_steps, episode_id=episode, meta=meta)
    # the oracle proposes stop at the action limit, so this ends after at most max_steps + 1 proposals
    for _ in range(settings.max_steps + 1):
        session.propose()
        session.accept()
        if session.stopped:
            break
    session.finish(accepted=True, status="stopped" if session.stopped else "limit")
    return session


def generate_case(tool, case: Case, manifest: Path, settings: GenerateSettings, out: Path) -> CaseResult:
    """All requested episodes of one case into its log (skipped when already finished)."""
    from ..tools.litemedsam import image_key

    started = time.perf_counter()
    final = log_path(out, case.id)
    if is_finished(final, case.id, settings):
        return CaseResult(case.id, "skipped", episodes=len(planned_episodes(settings)))
    slug = case_slug(case.id)
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        loaded = load_case(case)
        image_file, mask_file = Path(out) / "images" / f"{slug}.png", Path(out) / "masks" / f"{slug}.png"
        image_file.parent.mkdir(parents=True, exist_ok=True)
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        with atomic_path(image_file) as temporary:  # a killed run never leaves a half-written image
            Image.fromarray(loaded.image).save(temporary)
        with atomic_path(mask_file) as temporary:
            save_mask_png(loaded.ground_truth, temporary)
        key = image_key(loaded.image)
        actions = 0
        with TrajectoryWriter(partial) as log:
            for paradigm, number in planned_episodes(settings):
                seed = episode_seed(settings.seed, case.id, paradigm, number)
                meta = {
                    "source": SOURCE,
                    "case_id": case.id,
                    "manifest": str(Path(manifest).resolve()),
                    "image_path": os.path.relpath(image_file, final.parent),
                    "mask_path": os.path.relpath(mask_file, final.parent),
                    "paradigm": paradigm,
                    "episode": number,
                    "seed": seed,
                    "modality": case.modality,
                    "generator": settings.as_meta(),
                }
                session = run_episode(tool, loaded.image, loaded.ground_truth, case.target, paradigm, seed,
                                      settings, log, image_key=key,
                                      episode=episode_id(case.id, paradigm, number, settings.seed), meta=meta)
                actions += len(session.actions)
        os.replace(partial, final)
    except Exception as error:  # one bad case must not stop a long run; it is reported and redone next time
        partial.unlink(missing_ok=True)
        return CaseResult(case.id, "failed", seconds=time.perf_counter() - started,
                          error=f"{type(error).__name__}: {error}")
    return CaseResult(case.id, "done", len(planned_episodes(settings)), actions, time.perf_counter() - started)


# -- the run ------------------------------------------------------------------------------------------------
_WORKER_TOOL = None


def _init_worker(tool: str, checkpoint: Optional[str]) -> None:
    """Each worker process builds its tool once (one torch thread: see ``TORCH_THREADS``)."""
    global _WORKER_TOOL
    import torch

    torch.set_num_threads(TORCH_THREADS)
    from ..registry import make_tool

    _WORKER_TOOL = make_tool(tool, checkpoint=checkpoint, device="cpu")


def _work(case: Case, manifest: Path, settings: GenerateSettings, out: Path) -> CaseResult:
    return generate_case(_WORKER_TOOL, case, manifest, settings, out)


def generate(manifest: str | Path, out: str | Path, settings: GenerateSettings = GenerateSettings(), *,
             workers: int = 1, dims: str = "2", include_non_expert: bool = False, tool=None,
             progress: bool = True, cases: Optional[list[str]] = None) -> GenerateReport:
    """Generate expert trajectories for the manifest's cases into ``out``.

    ``tool``: an already built tool to use in this process (``workers`` must be 1); otherwise each worker
    builds ``settings.tool``. ``cases``: only these case ids."""
    started = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    chosen, excluded = select_cases(read_manifest(manifest), dims, include_non_expert)
    if cases is not None:
        unknown = sorted(set(cases) - {c.id for c in chosen})
        if unknown:
            raise ValueError(f"not among the usable rows of {manifest}: {', '.join(unknown)}")
        chosen = [c for c in chosen if c.id in set(cases)]
    if not chosen:
        raise ValueError(f"{manifest} has no usable rows (dims={dims}); left out: {excluded[:3]}")
    with OutputLock(out, "trajectories generate"):  # refuses a second run on OUT, or a read-only OUT
        return _generate(manifest, out, settings, chosen, excluded, workers, dims, tool, progress, started)


def _generate(manifest: Path, out: Path, settings: GenerateSettings, chosen: list[Case], excluded: list,
              workers: int, dims: str, tool, progress: bool, started: float) -> GenerateReport:
    from tqdm import tqdm

    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = GenerateReport(out, excluded=excluded)
    todo = []
    for case in chosen:  # finished cases are skipped before any tool is built
        if is_finished(log_path(out, case.id), case.id, settings):
            report.results.append(CaseResult(case.id, "skipped", episodes=len(planned_episodes(settings))))
        else:
            todo.append(case)
    bar = tqdm(total=len(chosen), initial=len(report.results), unit="case", desc="trajectories",
               disable=not progress)
    interrupted = False
    try:
        if todo and (workers <= 1 or tool is not None or len(todo) == 1):
            if tool is None:
                from ..registry import make_tool

                tool = make_tool(settings.tool, checkpoint=settings.checkpoint)
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(TORCH_THREADS)
            try:
                for case in todo:
                    report.results.append(generate_case(tool, case, manifest, settings, out))
                    bar.update()
            finally:
                torch.set_num_threads(threads)
        elif todo:
            import multiprocessing

            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(settings.tool, settings.checkpoint)) as pool:
                futures = [pool.submit(_work, case, manifest, settings, out) for case in todo]
                for future in as_completed(futures):
                    report.results.append(future.result())
                    bar.update()
    except KeyboardInterrupt:  # finished logs are complete already; record them, marked partial
        interrupted = True
    finally:
        bar.close()
    order = {case.id: i for i, case in enumerate(chosen)}
    report.results.sort(key=lambda r: order[r.case_id])
    report.seconds = time.perf_counter() - started
    write_summary(out / "generate.json", manifest, settings, dims, report, partial=interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return report


def write_summary(path: Path, manifest: Path, settings: GenerateSettings, dims: str, report: GenerateReport,
                  partial: bool = False) -> None:
    """``generate.json``: each case's latest generation (a skipped case keeps the record of the run that made
    it), and this run's time; ``partial`` when the run was interrupted (the cases not reached are absent)."""
    previous = {}
    if path.is_file():
        try:
            previous = {c["case_id"]: c for c in json.loads(path.read_text(encoding="utf-8")).get("cases", [])}
        except (ValueError, KeyError, TypeError):
            previous = {}
    cases = [previous.get(r.case_id, asdict(r)) if r.status == "skipped" else asdict(r) for r in report.results]
    write_text_atomic(path, json.dumps(
        {"manifest": str(manifest.resolve()), "settings": settings.as_meta(), "dims": dims, "cases": cases,
         "excluded": report.excluded, "seconds_this_run": round(report.seconds, 2), "partial": partial},
        indent=1) + "\n")


def comparable_records(path: str | Path) -> Iterator[dict]:
    """A log's records without the wall-clock keys (``TIMING_KEYS``): what must match between two runs with
    the same seed."""
    for record in iter_records(path):
        yield {k: v for k, v in record.items() if k not in TIMING_KEYS}
