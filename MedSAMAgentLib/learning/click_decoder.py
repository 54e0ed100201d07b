"""A click-trained LiteMedSAM prompt encoder + mask decoder, fine-tuned on cached image embeddings (issue 14).

Why: LiteMedSAM was trained with boxes only; its decoder gets worse with clicks. Models trained with simulated
clicks (SAM's interactive training, RITM, SimpleClick) keep improving with every click. The encoder stays
frozen, so each image's embedding is computed once (``embeddings.EmbeddingCache``) and training touches only
the ~4 M parameters of the prompt encoder and mask decoder.

The simulation follows the protocol's update rule (AGENT_PROTOCOL.md), exactly as the tool then runs it:
- the box step is LiteMedSAM's own box output (frozen, the tool's ``MASK_THRESHOLD`` calibration folded into
  its low-res logits, so 0 is the edge) -- box Dice is unchanged by construction;
- each further step sends only the newest click plus the previous step's low-res logits (detached) as the
  mask input; clicks come from the current error regions (``policies.oracle.corrective_clicks``: the
  standard oracle click or one of the deep points of the larger error, at random);
- the decoder's output is a correction added to the previous logits (``click_step``), its last
  hypernetwork layer zero at the start: training begins from "a click changes nothing" instead of from
  LiteMedSAM's decoder, which never saw a mask input and turns any mask into noise. With the few hundred
  steps two shared CPU cores allow, the decoder only has to learn where and how much to correct, not to copy
  the mask through itself;
- a random number of untrained warm-up clicks before the trained ones, so later-stage masks are seen too;
- augmentation: box jitter (``oracle.jittered_box``) and the random click choice. The embeddings are cached,
  so there is no image-level augmentation (it would need the encoder at every step).
Loss per step: BCE + soft Dice over the image's part of the 256 grid, plus the IoU head's squared error.

    python -m MedSAMAgentLib.learning.click_decoder train --out runs/click_decoder/shipped --licensed-only
    python -m MedSAMAgentLib.learning.click_decoder folds --folds 2 --out runs/click_decoder/folds

The weights file holds the prompt encoder's and mask decoder's state (float16, keys ``prompt_encoder.*`` and
``mask_decoder.*``); ``load_click_decoder`` checks its SHA-256 when one is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .embeddings import DEFAULT_FOLDER, EmbeddingCache, TrainingCase

INPUT_SIZE = 256


@dataclass(frozen=True)
class TrainSettings:
    """The recipe; the shipped weights and every leave-out fold use the same one (only the rows differ)."""

    steps: int = 25  # optimizer steps (what the shared CPU allowed; see the README)
    batch: int = 2  # samples per step (same first-prompt kind)
    clicks: int = 2  # trained click iterations per sample
    warmup_clicks: int = 3  # untrained click iterations before them: 0..this, uniform
    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_warmup: int = 10  # linear warm-up steps, then cosine decay to 10 %
    jitter_share: float = 0.5  # samples whose box is jittered (oracle.jittered_box, 10 %)
    jitter: float = 0.1
    iou_weight: float = 0.5
    local: bool = True  # corrections windowed around the click (click_window)
    seed: int = 0
    threads: int = 1


@dataclass
class Prepared:
    """A training case on the 256 grid of LiteMedSAM's input."""

    case: TrainingCase
    embedding: "object"  # torch (1, 256, 64, 64)
    target: np.ndarray  # (256, 256) float32 soft ground truth, 0 outside the image
    valid: np.ndarray  # (256, 256) bool: the image's part of the grid
    scale: float  # image pixels -> grid pixels
    box_logits: Optional[np.ndarray] = None  # LiteMedSAM's calibrated low-res logits for the exact gt box


def prepare(case: TrainingCase, cache: EmbeddingCache) -> Prepared:
    import torch
    from PIL import Image

    h, w = case.mask.shape
    scale = INPUT_SIZE / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    soft = np.asarray(Image.fromarray(case.mask.astype(np.float32)).resize((new_w, new_h), Image.BILINEAR),
                      np.float32)
    target = np.zeros((INPUT_SIZE, INPUT_SIZE), np.float32)
    target[:new_h, :new_w] = np.clip(soft, 0, 1)
    if not (target > 0.5).any():  # a structure thinner than a grid pixel everywhere: keep its pixels
        target[:new_h, :new_w] = np.maximum(target[:new_h, :new_w], (soft > 0).astype(np.float32) * 0.51)
    valid = np.zeros((INPUT_SIZE, INPUT_SIZE), bool)
    valid[:new_h, :new_w] = True
    return Prepared(case, torch.from_numpy(cache.get(case)), target, valid, scale)


# -- the decoder --------------------------------------------------------------------------------------------
def decode(prompt_encoder, mask_decoder, embeddings, points=None, labels=None, boxes=None, masks=None):
    """One batched decoder call on the 256 grid: (logits B x 1 x 256 x 256, predicted IoU B x 1). ``points``
    B x N x 2, ``labels`` B x N, ``boxes`` B x 4, ``masks`` B x 1 x 256 x 256 (low-res logits)."""
    pts = None if points is None else (points, labels)
    sparse, dense = prompt_encoder(points=pts, boxes=boxes, masks=masks)
    return mask_decoder(image_embeddings=embeddings, image_pe=prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


LOGIT_LIMIT = 20.0  # corrections add up over many clicks; the logits stay within +-this


MIN_REACH = 8.0  # grid pixels: the smallest reach of a click's correction


def click_window(points, previous, local: bool = True):
    """Where a click may correct (B x 1 x 256 x 256): a Gaussian around the click whose sigma is the
    equivalent radius of the current mask (at least ``MIN_REACH``), read from the previous logits only, so
    the update rule's inputs are all it needs. A click then cannot move the mask far from itself."""
    import torch

    if not local:
        return torch.ones_like(previous)
    side = previous.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(side, dtype=previous.dtype), torch.arange(side, dtype=previous.dtype),
                            indexing="ij")
    area = (previous > 0).float().sum(dim=(1, 2, 3))
    sigma = torch.sqrt(area / math.pi).clamp(min=MIN_REACH)[:, None, None, None]
    dx = xs[None, None] - points[:, 0, 0][:, None, None, None]
    dy = ys[None, None] - points[:, 0, 1][:, None, None, None]
    return torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))


def click_step(prompt_encoder, mask_decoder, embeddings, points, labels, previous, local: bool = True):
    """One click under the update rule: the newest click and the previous low-res logits in, the previous
    logits plus the decoder's correction (times ``click_window``) out (B x 1 x 256 x 256), with the
    predicted IoU (B x 1)."""
    delta, iou = decode(prompt_encoder, mask_decoder, embeddings, points, labels, masks=previous)
    return (previous + delta * click_window(points, previous, local)).clamp(-LOGIT_LIMIT, LOGIT_LIMIT), iou


def init_click_network(net):
    """Copies of LiteMedSAM's prompt encoder and mask decoder, the single-mask hypernetwork's last layer set
    to zero so that ``click_step`` starts as the identity."""
    import torch

    prompt_encoder, mask_decoder = copy.deepcopy(net.prompt_encoder), copy.deepcopy(net.mask_decoder)
    last = mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return prompt_encoder, mask_decoder


def save_weights(prompt_encoder, mask_decoder, path: str | Path, local: bool = True) -> str:
    """Write the float16 state (and ``recipe.local``: whether corrections are windowed); returns its SHA-256."""
    import torch

    from ..outputs import atomic_path
    from ..tools.litemedsam import file_sha256

    state = {f"prompt_encoder.{k}": v.detach().half().clone() for k, v in prompt_encoder.state_dict().items()}
    state.update({f"mask_decoder.{k}": v.detach().half().clone() for k, v in mask_decoder.state_dict().items()})
    state["recipe.local"] = torch.tensor(int(local))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return file_sha256(path)


def load_click_decoder(net, path: str | Path, sha256: Optional[str] = None):
    """(prompt encoder, mask decoder, local): copies of ``net``'s with the click-trained weights at ``path``,
    and whether its corrections are windowed (``click_window``; files without the flag were not). With
    ``sha256``, a file that does not match is refused (ToolError naming it) before it is read."""
    from ..tools.base import ToolError
    from ..tools.checkpoints import load_state_dict
    from ..tools.litemedsam import file_sha256

    path = Path(path)
    if not path.is_file():
        raise ToolError(f"click decoder weights not found: {path}")
    if sha256 is not None and file_sha256(path) != sha256:
        raise ToolError(f"the click decoder weights at {path} fail their SHA-256 check (expected {sha256[:12]}..., "
                        f"got {file_sha256(path)[:12]}...): a damaged or replaced file; reinstall the package")
    state = load_state_dict(path, "click decoder")
    prompt_encoder, mask_decoder = copy.deepcopy(net.prompt_encoder), copy.deepcopy(net.mask_decoder)
    parts = {"prompt_encoder": {}, "mask_decoder": {}}
    local = bool(int(state.pop("recipe.local", 0)))
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head not in parts:
            raise ToolError(f"{path} is not a click decoder file: unexpected key {key!r}")
        parts[head][rest] = value.float()
    try:
        prompt_encoder.load_state_dict(parts["prompt_encoder"], strict=True)
        mask_decoder.load_state_dict(parts["mask_decoder"], strict=True)
    except RuntimeError as error:
        raise ToolError(f"{path} is not a click decoder file: {str(error).splitlines()[0]}") from None
    return prompt_encoder.eval(), mask_decoder.eval(), local


# -- simulation ---------------------------------------------------------------------------------------------
def box_logits(net, item: Prepared, box256: np.ndarray):
    """LiteMedSAM's own box output on the grid, calibrated so 0 is the edge (the tool's box step)."""
    import torch

    from ..tools.litemedsam import MASK_THRESHOLD

    with torch.no_grad():
        logits, _ = decode(net.prompt_encoder, net.mask_decoder, item.embedding,
                           boxes=torch.tensor(box256, dtype=torch.float32)[None])
    return logits - MASK_THRESHOLD


def next_click(logits: np.ndarray, item: Prepared, rng: np.random.Generator) -> tuple[float, float, int]:
    """A click (x, y, label) on the grid from the current error regions: the standard oracle click, or one of
    the other candidates of ``oracle.corrective_clicks``, at random."""
    from ..policies.oracle import corrective_clicks

    gt = item.target > 0.5
    pred = (logits > 0) & item.valid
    candidates = list(corrective_clicks(pred, gt, rng, extra=4))
    if not candidates:  # exact: a positive click deep inside keeps it so
        from ..policies.oracle import _padded_distance

        dist = _padded_distance(gt)
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return float(x), float(y), 1
    pick = candidates[0] if rng.random() < 0.5 else candidates[int(rng.integers(len(candidates)))]
    return float(pick.x), float(pick.y), int(pick.positive)


def _loss(torch, logits, iou_pred, items: Sequence[Prepared], iou_weight: float):
    target = torch.from_numpy(np.stack([i.target for i in items]))[:, None]
    valid = torch.from_numpy(np.stack([i.valid for i in items]))[:, None].float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum(dim=(1, 2, 3)) / valid.sum(dim=(1, 2, 3))
    prob = torch.sigmoid(logits) * valid
    inter = (prob * target).sum(dim=(1, 2, 3))
    soft_dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    with torch.no_grad():
        hard = ((logits > 0).float() * valid)
        gt = (target > 0.5).float()
        i = (hard * gt).sum(dim=(1, 2, 3))
        u = ((hard + gt) > 0).float().sum(dim=(1, 2, 3))
        true_iou = i / u.clamp(min=1)
    iou_loss = (iou_pred[:, 0] - true_iou) ** 2
    return (bce + soft_dice + iou_weight * iou_loss).mean(), float(true_iou.mean())


def train(cases: Sequence[TrainingCase], out: str | Path, settings: TrainSettings = TrainSettings(),
          cache: Optional[EmbeddingCache] = None, net=None, log=print) -> dict:
    """Fine-tune on ``cases`` (group-balanced sampling); writes ``out/click_decoder.pt`` and
    ``out/train.json``; returns the record (settings, rows, SHA-256, time, loss curve)."""
    import torch

    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not cases:
        raise ValueError("no training cases")
    cache = cache or EmbeddingCache(DEFAULT_FOLDER)
    if net is None:
        net = _litemedsam_net()
    items = [prepare(c, cache) for c in cases]
    groups: dict[str, list[Prepared]] = {}
    for item in items:
        groups.setdefault(item.case.group, []).append(item)
    names = sorted(groups)
    prompt_encoder, mask_decoder = init_click_network(net)
    prompt_encoder.train(), mask_decoder.train()
    params = [p for p in list(prompt_encoder.parameters()) + list(mask_decoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def lr_at(step: int) -> float:
        if step < settings.lr_warmup:
            return settings.lr * (step + 1) / settings.lr_warmup
        progress = (step - settings.lr_warmup) / max(1, settings.steps - settings.lr_warmup)
        return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    from ..policies.oracle import gt_box, jittered_box

    start = time.perf_counter()
    curve = []
    log_path = out / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    for step in range(settings.steps):
        batch = [groups[names[int(rng.integers(len(names)))]] for _ in range(settings.batch)]
        batch = [g[int(rng.integers(len(g)))] for g in batch]
        emb = torch.cat([b.embedding for b in batch])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad()
        total, ious, n_terms = 0.0, [], 0
        trained = settings.clicks
        boxes = []
        for b in batch:
            box = (jittered_box(b.case.mask, settings.jitter, rng) if rng.random() < settings.jitter_share
                   else gt_box(b.case.mask))
            boxes.append(np.array(box.as_list(), np.float32) * b.scale)
        previous = torch.cat([box_logits(net, b, bx) for b, bx in zip(batch, boxes)])
        warm = int(rng.integers(settings.warmup_clicks + 1))
        for k in range(warm + trained):
            clicks = [next_click(previous[i, 0].numpy(), b, rng) for i, b in enumerate(batch)]
            points = torch.tensor([[[c[0], c[1]]] for c in clicks], dtype=torch.float32)
            labels = torch.tensor([[c[2]] for c in clicks], dtype=torch.long)
            step_args = (prompt_encoder, mask_decoder, emb, points, labels, previous, settings.local)
            if k < warm:
                with torch.no_grad():
                    logits, _ = click_step(*step_args)
            else:
                logits, iou_pred = click_step(*step_args)
                loss, mean_iou = _loss(torch, logits, iou_pred, batch, settings.iou_weight)
                (loss / trained).backward()
                total, n_terms = total + float(loss.detach()), n_terms + 1
                ious.append(mean_iou)
            previous = logits.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        record = {"step": step, "loss": round(total / max(n_terms, 1), 4), "iou": round(float(np.mean(ious)), 4),
                  "warmup_clicks": warm, "seconds": round(time.perf_counter() - start, 1)}
        curve.append(record)
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        if log and (step % 10 == 0 or step == settings.steps - 1):
            log(f"step {step + 1}/{settings.steps} loss {record['loss']:.4f} iou {record['iou']:.3f} "
                f"{record['seconds']:.0f} s")
    sha = save_weights(prompt_encoder, mask_decoder, out / "click_decoder.pt", settings.local)
    info = {"settings": asdict(settings), "rows": sorted({c.row_id for c in cases}),
            "groups": names, "cases": len(cases), "sha256": sha, "seconds": round(time.perf_counter() - start, 1),
            "final_loss": float(np.mean([r["loss"] for r in curve[-20:]]))}
    (out / "train.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def _litemedsam_net():
    """LiteMedSAM's network with the SHA-checked weights, as the tool loads it (eval mode, CPU)."""
    from ..tools.litemedsam import LiteMedSAM

    return LiteMedSAM(device="cpu", runtime="torch").net


# -- leave-datasets-out ---------------------------------------------------------------------------------------
def group_folds(groups: Sequence[str], folds: int) -> list[list[str]]:
    """Groups dealt round-robin into ``folds`` held-out sets (sorted, so the folds are the same every run)."""
    names = sorted(set(groups))
    return [names[i::folds] for i in range(min(folds, len(names)))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..manifest import SHARED_DATA, read_manifest
    from .embeddings import training_cases

    parser = argparse.ArgumentParser(description="Train LiteMedSAM's click decoder on cached embeddings.")
    parser.add_argument("command", choices=("train", "folds"))
    parser.add_argument("--manifest", default=str(SHARED_DATA / "manifest.jsonl"))
    parser.add_argument("--embeddings", default=str(DEFAULT_FOLDER))
    parser.add_argument("--out", required=True)
    parser.add_argument("--licensed-only", action="store_true",
                        help="train only on rows whose licence allows redistributing derived weights")
    parser.add_argument("--folds", type=int, default=2, help="folds: held-out sets of groups")
    parser.add_argument("--only-fold", type=int, default=None)
    for name, value in asdict(TrainSettings()).items():
        kind = (lambda text: text.strip().lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    settings = TrainSettings(**{k: getattr(args, k) for k in asdict(TrainSettings())})
    cases, _ = training_cases(read_manifest(args.manifest))
    cache = EmbeddingCache(args.embeddings)
    out = Path(args.out)
    if args.command == "train":
        if args.licensed_only:
            cases = [c for c in cases if c.derived_weights_ok]
        info = train(cases, out, settings, cache)
        print(json.dumps({k: v for k, v in info.items() if k != "rows"}, indent=1))
        return 0
    net = _litemedsam_net()
    folds = group_folds([c.group for c in cases], args.folds)
    (out).mkdir(parents=True, exist_ok=True)
    (out / "folds.json").write_text(json.dumps(folds, indent=1) + "\n")
    for index, held in enumerate(folds):
        if args.only_fold is not None and index != args.only_fold:
            continue
        train_cases = [c for c in cases if c.group not in held]
        print(f"fold {index}: holding out {held}; {len(train_cases)} training cases", flush=True)
        train(train_cases, out / f"fold{index}", settings, cache, net=net)
    return 0


if __name__ == "__main__":
    sys.exit(main())
