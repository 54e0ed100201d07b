"""Trajectory logs (generated or from clinicians' sessions) -> training data for the trainers people use.

- ``llamafactory`` (SFT): ShareGPT-style multimodal JSON plus a ``dataset_info.json`` entry. Each sample is the
  conversation the policy sees (``policies.mllm_prompt``: system prompt with the tool schemas, first user turn
  with the target, follow-up turns with the green-overlay image) and, as assistant turns, the
  ``toolcall.format_tool_call`` text of the applied actions ending with ``stop_action``. The images are PNG
  files next to the JSON (``images/``), exactly the 512x512 RGB images the policy sees.
- ``verl`` (RL): a parquet file with verl's RLHFDataset fields (``data_source``, ``prompt`` as a chat list with
  an ``<image>`` placeholder, ``images`` as PNG bytes, ``ability``, ``reward_model`` {style, ground_truth = the
  ground-truth mask PNG}, ``extra_info``) plus the release's columns (``id``, ``target_description``, ``mask``
  PNG bytes) and ``engine_image`` (the HxW RGB image the tool works on, PNG), one row per distinct task.
  Multi-turn: ``agent_name`` = ``tool_agent`` and ``extra_info.tools_kwargs`` (each tool's ``create_kwargs``
  carry the task) for ``training.verl_tools``; the system message has no tools block, because the trainer's
  chat template renders the tool schemas (``training.environment.trainer_system_prompt``). The same rows feed
  TRL (``training.trl_env.trl_dataset``).

Which episodes: only finished episodes whose end record is ``accepted`` (a clinician approved the final mask,
or a generated expert trajectory). Where each piece comes from:
- the image: the header's ``meta["image_path"]`` (the exact 2D engine image; ``trajectory.load_episode_image``),
  else the case ``meta["case_id"]`` of ``meta["manifest"]`` reloaded;
- the ground truth: ``meta["mask_path"]`` (generated logs), else the manifest case, else the accepted final mask
  (a clinician's session: what the clinician approved *is* the ground truth).

An episode that a later session names in ``meta.corrects_episode`` (the clinician redid that propagated slice)
is left out: the correction, not the propagation it replaced, is the expert data (``corrected_episodes``).

``min_iou`` drops episodes whose final mask is below that IoU against the ground truth (weak expert runs).
``only_accepted`` / ``only_corrections`` keep single steps instead of whole episodes: agent proposals the
reviewer accepted (decision ``accept``) / the clinician's overrides (``override``); both: either. Then each
kept step is one SFT sample (the conversation up to it, with the protocol's 5-turn history, and that step's
action as the last assistant turn; train with LLaMA-Factory's ``mask_history: true`` so only it is learned),
and the verl export keeps the tasks that have such a step. A whole-episode sample keeps every turn (the policy
sees at most the last 5 previous turns; generated episodes, at most 5 actions, never exceed that).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..actions import Action, Stop
from ..geometry import Letterbox
from ..outputs import OutputLock, atomic_path, write_text_atomic
from ..trajectory import Episode, load_episode_image, read_episodes

SFT_FILE = "medsam_agent_sft.json"
SFT_DATASET = "medsam_agent_sft"
RL_FILE = "medsam_agent_rl.parquet"
DATA_SOURCE = "medsam_agent"
ABILITY = "segmentation"
FORMATS = ("llamafactory", "verl")


@dataclass
class Turn:
    """One assistant turn of an exported episode: the applied action, the mask after it (None for stop)."""

    action: Action
    mask: Optional[np.ndarray]
    decision: str  # accept / override / hint / place / end (the implied stop of an accepted episode)


@dataclass
class ExportEpisode:
    episode: Episode
    log: Path
    image: np.ndarray
    target: str
    turns: list[Turn]  # box/point turns, then one stop
    ground_truth: Optional[np.ndarray] = None
    ground_truth_source: str = ""

    @property
    def episode_id(self) -> str:
        return self.episode.episode_id

    @property
    def meta(self) -> dict:
        return self.episode.header.get("meta") or {}

    @property
    def prompts(self) -> list[Turn]:
        return [t for t in self.turns if not isinstance(t.action, Stop)]

    @property
    def origin(self) -> str:
        from .generate import SOURCE

        return "generated" if self.meta.get("source") == SOURCE else "session"


@dataclass
class ExportReport:
    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    episodes: int = 0
    samples: int = 0
    images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def summary(self) -> str:
        text = (f"{self.format}: {self.samples} samples from {self.episodes} episodes"
                f"{f', {self.images} images' if self.images else ''} -> {', '.join(map(str, self.files))}")
        if self.skipped:
            text += "\nskipped: " + "; ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


# -- reading logs -------------------------------------------------------------------------------------------
def log_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Log files from files and folders (folders: every ``*.jsonl`` below, unfinished ``.partial`` left out)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no log file or folder at {path}")
    if not files:
        raise ValueError(f"no *.jsonl trajectory logs in {', '.join(map(str, paths))}")
    return files


def _case(meta: dict, log: Path):
    from ..manifest import load_case, read_manifest

    manifest, case_id = meta.get("manifest"), meta.get("case_id")
    if not manifest or not case_id:
        return None
    manifest = Path(manifest) if Path(manifest).is_absolute() else log.parent / manifest
    for case in read_manifest(manifest):
        if case.id == case_id:
            return load_case(case)
    raise ValueError(f"case {case_id!r} is not in {manifest}")


def _read_mask(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False) > 0
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    return (array[..., 0] if array.ndim == 3 else array) > 0


def turns_of(episode: Episode) -> list[Turn]:
    """The applied actions still in effect, each with the mask after it, ending with one stop. A stop that was
    followed by more prompts (the episode reopened) is dropped."""
    turns: list[Turn] = []
    for step in episode.steps:
        action = step.applied
        if action is None or isinstance(action, Stop):
            continue
        turns.append(Turn(action, step.mask, step.decision))
    last = episode.steps[-1] if episode.steps else None
    stop_decision = last.decision if last is not None and isinstance(last.applied, Stop) else "end"
    turns.append(Turn(Stop(), None, stop_decision))
    return turns


def prepare(episode: Episode, log: Path, need_ground_truth: bool) -> ExportEpisode | str:
    """The episode with its image, turns and ground truth, or the reason it cannot be exported."""
    from ..session import UNFINISHED_STATUSES

    if episode.end is None:
        return "unfinished episodes (no end record)"
    if episode.problems:
        return "episodes with unreadable records (see the warnings)"
    if episode.end.get("status") in UNFINISHED_STATUSES:
        return "episodes that paused, failed or were interrupted"
    if not episode.accepted:
        return "episodes not accepted"
    if [s.record.get("index") for s in episode.steps] != list(range(len(episode.steps))):
        return "episodes with missing steps (step numbers not consecutive)"
    try:
        turns = turns_of(episode)
    except ValueError:
        return "episodes with a damaged step mask"
    if len(turns) == 1:
        return "episodes without any box/point action"
    if any(t.mask is None for t in turns[:-1]):
        return "episodes with a step logged without its mask"
    shape = tuple((episode.header.get("image") or {}).get("shape") or ())
    if shape and any(t.mask.shape != shape for t in turns[:-1]):
        return "episodes with a step mask of the wrong size"
    meta = episode.header.get("meta") or {}
    loaded = None
    try:
        if meta.get("image_path"):
            image = load_episode_image(episode.header, log)
        else:
            loaded = _case(meta, log)
            if loaded is None:
                return "episodes with no recoverable image (no meta.image_path, no manifest case)"
            image = loaded.image
    except (OSError, ValueError) as error:
        return f"episodes whose image cannot be read ({type(error).__name__})"
    target = episode.header.get("target") or ""
    if not target.strip():
        return "episodes without a target description"
    result = ExportEpisode(episode, log, image, target, turns)
    if need_ground_truth:
        if meta.get("mask_path"):
            result.ground_truth, result.ground_truth_source = _read_mask(log.parent / meta["mask_path"]), "mask_path"
        elif meta.get("manifest") and meta.get("case_id"):
            loaded = loaded or _case(meta, log)
            result.ground_truth, result.ground_truth_source = loaded.ground_truth, "manifest"
        else:
            result.ground_truth, result.ground_truth_source = episode.final_mask, "accepted final mask"
        if result.ground_truth is None or result.ground_truth.shape != image.shape[:2]:
            return "episodes whose ground truth is missing or of the wrong size"
    return result


def load_export_episodes(paths: Sequence[str | os.PathLike], report: ExportReport,
                         need_ground_truth: bool = False, min_iou: float = 0.0) -> Iterator[ExportEpisode]:
    """Exportable episodes; with ``min_iou`` only those whose final mask reaches it against the ground truth."""
    from ..metrics import iou

    files = log_files(paths)
    replaced = corrected_episodes(files)
    for log in files:
        for episode in read_episodes(log):
            prepared = prepare(episode, log, need_ground_truth or min_iou > 0)
            if episode.episode_id in replaced:
                report.skip("episodes a clinician's later correction replaced (meta.corrects_episode)")
            elif isinstance(prepared, str):
                report.skip(prepared)
            elif min_iou > 0 and iou(prepared.prompts[-1].mask, prepared.ground_truth) < min_iou:
                report.skip(f"episodes ending below IoU {min_iou:g}")
            else:
                yield prepared


def corrected_episodes(files: Sequence[Path]) -> set[str]:
    """Episodes that a later session names in ``meta.corrects_episode``: a slice a propagation wrote that the
    clinician then redid on its own (the Slicer panel, Start on that slice). Only the correction is expert
    data, whether or not it was finished: the clinician judged the propagated mask wrong. Headers only are
    parsed (a cheap text test first), so this pass stays light next to reading the steps' masks."""
    replaced: set[str] = set()
    for log in files:
        try:
            handle = open(log, encoding="utf-8", errors="replace")  # a damaged line is read_episodes' to name
        except OSError:
            continue  # so is a missing or unreadable file
        with handle:
            for line in handle:
                if '"corrects_episode"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                corrects = (record.get("meta") or {}).get("corrects_episode") if record.get("type") == "episode" \
                    else None
                if isinstance(corrects, str):
                    replaced.add(corrects)
    return replaced


def selected_turns(episode: ExportEpisode, only_accepted: bool, only_corrections: bool) -> list[int]:
    """Indices of the turns kept by the step filters (all turns when neither is set)."""
    wanted = set()
    if only_accepted:
        wanted.add("accept")
    if only_corrections:
        wanted.add("override")
    return [i for i, t in enumerate(episode.turns) if not wanted or t.decision in wanted]


# -- PNG ----------------------------------------------------------------------------------------------------
def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png(mask: np.ndarray) -> bytes:
    """A mask as a 0/255 greyscale PNG."""
    return png_bytes(np.asarray(mask, bool).astype(np.uint8) * 255)


# -- LLaMA-Factory ------------------------------------------------------------------------------------------
def dataset_info(file_name: str = SFT_FILE) -> dict:
    """LLaMA-Factory's ``dataset_info.json`` entry for the exported file (sharegpt, messages + images)."""
    return {
        SFT_DATASET: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        }
    }


def sft_messages(episode: ExportEpisode, upto: Optional[int] = None) -> list[dict]:
    """The conversation of ``mllm_prompt`` for the whole episode (``upto`` None) or up to turn ``upto``
    (history as the policy sees it), ending with that turn's assistant action."""
    from ..policies.mllm_prompt import HISTORY_TURNS, assistant_message, build_messages

    prompts = episode.prompts
    letterbox = Letterbox(*episode.image.shape[:2])
    if upto is None:
        upto, history = len(episode.turns) - 1, None
    else:
        history = HISTORY_TURNS
    done = prompts[:upto]
    messages = build_messages(episode.image, episode.target, [t.action for t in done], [t.mask for t in done],
                              history_turns=history)
    return messages + [assistant_message(episode.turns[upto].action, letterbox)]


def export_llamafactory(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                        only_accepted: bool = False, only_corrections: bool = False, min_iou: float = 0.0,
                        progress: bool = False) -> ExportReport:
    """Write ``out/medsam_agent_sft.json``, ``out/images/*.png`` and ``out/dataset_info.json``."""
    from tqdm import tqdm

    from ..policies.mllm_prompt import split_images

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    report = ExportReport("llamafactory", out)
    samples: list[dict] = []
    written: dict[str, str] = {}  # image content digest -> relative path (each image file once)
    per_step = only_accepted or only_corrections
    for episode in tqdm(load_export_episodes(paths, report, min_iou=min_iou), desc="export", unit="episode",
                        disable=not progress):
        chosen = selected_turns(episode, only_accepted, only_corrections)
        if not chosen:
            report.skip("episodes with no step of the requested kind")
            continue
        report.episodes += 1
        for upto in (chosen if per_step else [None]):
            flat, images = split_images(sft_messages(episode, upto))
            names = []
            for image in images:
                digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
                if digest not in written:
                    name = f"images/{episode.episode_id}_{digest}.png"
                    (out / name).write_bytes(png_bytes(image))
                    written[digest] = name
                names.append(written[digest])
            samples.append({
                "messages": flat,
                "images": names,
                "id": f"{episode.episode_id}" + ("" if upto is None else f"-t{upto}"),
                "target": episode.target,
                "origin": episode.origin,
            })
    path = out / SFT_FILE
    write_text_atomic(path, json.dumps(samples, ensure_ascii=False, indent=1) + "\n")
    info_path = out / "dataset_info.json"
    info = {}
    if info_path.exists():  # other datasets listed there are kept
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{info_path} is not a JSON object ({error}); fix or remove it") from None
        if not isinstance(info, dict):
            raise ValueError(f"{info_path} is not a JSON object; fix or remove it")
    info.update(dataset_info(SFT_FILE))
    write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")
    report.samples, report.images = len(samples), len(written)
    report.files = [path, info_path]
    return report


# -- verl ---------------------------------------------------------------------------------------------------
VERL_AGENT = "tool_agent"  # verl's multi-turn agent loop


def rl_schema():
    import pyarrow as pa

    from ..toolcall import TOOL_NAMES

    task = pa.struct([("id", pa.string()), ("engine_image", pa.binary()), ("mask", pa.binary())])
    return pa.schema([
        ("id", pa.string()),
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.binary())])),
        ("extra_info", pa.struct([
            ("index", pa.int64()), ("split", pa.string()), ("id", pa.string()),
            ("target_description", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
            ("engine_image", pa.binary()), ("ground_truth_source", pa.string()), ("origin", pa.string()),
            ("expert_episodes", pa.int32()), ("expert_actions", pa.list_(pa.int32())),
            ("expert_final_iou", pa.list_(pa.float64())), ("episode_ids", pa.list_(pa.string())),
            ("need_tools_kwargs", pa.bool_()),
            ("tools_kwargs", pa.struct([(name, pa.struct([("create_kwargs", task)])) for name in TOOL_NAMES])),
        ])),
        ("target_description", pa.string()),
        ("mask", pa.binary()),
        ("engine_image", pa.binary()),
        ("agent_name", pa.string()),
    ])


def export_verl(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, only_accepted: bool = False,
                only_corrections: bool = False, min_iou: float = 0.0, split: str = "train",
                progress: bool = False) -> ExportReport:
    """Write ``out/medsam_agent_rl.parquet``: one row per distinct (image, target, ground truth)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from ..metrics import iou
    from ..policies.mllm_prompt import build_messages, split_images
    from ..toolcall import TOOL_NAMES
    from ..training.environment import trainer_system_prompt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport("verl", out)
    rows: dict[str, dict] = {}
    for episode in tqdm(load_export_episodes(paths, report, need_ground_truth=True, min_iou=min_iou), desc="export",
                        unit="episode", disable=not progress):
        if (only_accepted or only_corrections) and not selected_turns(episode, only_accepted, only_corrections):
            report.skip("episodes with no step of the requested kind")
            continue
        report.episodes += 1
        gt = episode.ground_truth
        key = hashlib.sha1(episode.image.tobytes() + episode.target.encode() + np.packbits(gt).tobytes()
                           ).hexdigest()[:16]
        final_iou = iou(episode.prompts[-1].mask, gt)
        if key in rows:
            info = rows[key]["extra_info"]
            info["expert_episodes"] += 1
            info["expert_actions"].append(len(episode.prompts))
            info["expert_final_iou"].append(final_iou)
            info["episode_ids"].append(episode.episode_id)
            continue
        flat, images = split_images(build_messages(episode.image, episode.target))
        flat[0] = {"role": "system", "content": trainer_system_prompt()}  # the tools come from the tool config
        task_id = episode.meta.get("case_id") or f"{episode.log.stem}/{episode.episode_id}"
        engine_png, gt_png = png_bytes(episode.image), mask_png(gt)
        h, w = gt.shape
        rows[key] = {
            "id": task_id,
            "data_source": DATA_SOURCE,
            "prompt": flat,
            "images": [{"bytes": png_bytes(image), "path": None} for image in images],
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": gt_png},
            "extra_info": {
                "index": len(rows), "split": split, "id": task_id, "target_description": episode.target,
                "height": h, "width": w, "engine_image": engine_png,
                "ground_truth_source": episode.ground_truth_source, "origin": episode.origin,
                "expert_episodes": 1, "expert_actions": [len(episode.prompts)], "expert_final_iou": [final_iou],
                "episode_ids": [episode.episode_id],
                "need_tools_kwargs": True,
                "tools_kwargs": {name: {"create_kwargs": {"id": task_id, "engine_image": engine_png, "mask": gt_png}}
                                 for name in TOOL_NAMES},
            },
            "target_description": episode.target,
            "mask": gt_png,
            "engine_image": engine_png,
            "agent_name": VERL_AGENT,
        }
    table = pa.Table.from_pylist(list(rows.values()), schema=rl_schema())
    path = out / RL_FILE
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    report.samples, report.files = table.num_rows, [path]
    return report


def export(paths: Sequence[str | os.PathLike], fmt: str, out: str | os.PathLike, **options) -> ExportReport:
    """Export in ``fmt``, holding ``out`` for this run (a second export into it is refused)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    with OutputLock(out, "export"):
        if fmt == "llamafactory":
            return export_llamafactory(paths, out, **options)
        return export_verl(paths, out, **options)
