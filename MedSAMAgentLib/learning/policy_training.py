"""SFT then RL for the learned policy, on the CPU, seeded (issue 15; MedSAM-Agent's recipe at CPU scale).

- **SFT** (``train_sft``): on expert-trajectory samples (``policy_data``): cross-entropy of the action
  distribution (``policy_net.action_logits``) towards the expert's next action, plus the error maps (where the
  mask misses / over-reaches, per grid cell) and the stop logit (IoU >= the clinician's stop level), with
  random flips/transposes.
- **RL** (``train_rl``): group-relative policy gradient (GRPO-style REINFORCE) with the project's verifiable
  reward (``rewards.episode_reward``: format + outcome + process): from the expert's jittered box on a training
  image, ``group`` episodes are sampled from the policy through the real tool, each episode's reward minus the
  group's mean is its advantage; a KL-like anchor (cross-entropy on SFT samples) keeps it near the expert.

Commands (``nice -n 10``; one thread):

    python -m MedSAMAgentLib.learning.policy_training ship      # the shipped weights (licence-ok rows only)
    python -m MedSAMAgentLib.learning.policy_training leave-out # leave-datasets-out folds + evaluation
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .policy_data import NO_ACTION, STOP_KIND, PolicySamples, augment
from .policy_net import GRID, NetConfig, PolicyNet, action_logits, click_in_cell, features, valid_cells

RUNS = Path(__file__).resolve().parents[2] / "runs" / "learned_policy"  # gitignored


@dataclass(frozen=True)
class SFTSettings:
    steps: int = 150  # batches (not epochs: a fold and the shipped run get the same training budget)
    batch: int = 32
    lr: float = 2e-3
    action_weight: float = 0.5
    stop_weight: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class RLSettings:
    iterations: int = 1
    cases: int = 8  # training images per iteration
    group: int = 4  # episodes sampled per image (the group of the group-relative advantage)
    max_steps: int = 5  # the protocol's action limit (the box is the first)
    lr: float = 5e-4
    anchor: float = 0.5  # weight of the SFT cross-entropy kept during RL
    temperature: float = 1.0
    seed: int = 0


def _log(message: str, log: Optional[Callable[[str], None]]) -> None:
    if log is not None:
        log(message)


def _batch_tensors(samples: PolicySamples, index: np.ndarray, rng: np.random.Generator, train: bool = True):
    x, errors, cell = samples.x[index].astype(np.float32), samples.errors[index].astype(np.float32), samples.cell[index]
    if train:
        x, errors, cell = augment(x, errors, cell.astype(np.int64), rng)
    kind = samples.kind[index].astype(np.int64)
    # The clinician accepts a stop only at IoU >= 0.9: the expert's other stops (the action limit, or no click
    # raising IoU by tau) are not imitated -- there a click in an error region still saves the clinician one.
    kind[(kind == STOP_KIND) & (samples.stop[index] < 0.5)] = NO_ACTION
    return (torch.from_numpy(x), torch.from_numpy(errors), torch.from_numpy(np.asarray(cell, np.int64)),
            torch.from_numpy(kind), torch.from_numpy(samples.stop[index]))


def sft_loss(net: PolicyNet, x, errors, cell, kind, stop, settings: SFTSettings = SFTSettings()) -> torch.Tensor:
    """Error maps (BCE on cell fractions) + the expert's action (CE over the action distribution) + stop."""
    maps, stop_logit = net(x)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(maps, errors, pos_weight=torch.tensor(4.0))
    loss = loss + settings.stop_weight * torch.nn.functional.binary_cross_entropy_with_logits(stop_logit, stop)
    has = kind != NO_ACTION
    if has.any():
        coverage = x[has, 1]
        valid = torch.stack([coverage < 0.999, coverage > 0.001], 1)
        k, c = kind[has], cell[has]
        target = torch.where(k == STOP_KIND, torch.full_like(k, 2 * GRID * GRID),
                             k * GRID * GRID + c[:, 0] * GRID + c[:, 1])
        clicks = k != STOP_KIND
        rows = torch.nonzero(clicks)[:, 0]
        valid[rows, k[clicks], c[clicks, 0], c[clicks, 1]] = True  # the expert's own cell is always allowed
        logits = action_logits(maps[has], stop_logit[has], valid)
        loss = loss + settings.action_weight * torch.nn.functional.cross_entropy(logits, target)
    return loss


def train_sft(samples: PolicySamples, settings: SFTSettings = SFTSettings(), net: Optional[PolicyNet] = None,
              log: Optional[Callable[[str], None]] = None) -> PolicyNet:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    net = net or PolicyNet(NetConfig())
    net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.lr, total_steps=max(1, settings.steps))
    order, at, total, seen = rng.permutation(len(samples)), 0, 0.0, 0
    for step in range(settings.steps):
        if at >= len(order):  # the next epoch
            order, at = rng.permutation(len(samples)), 0
        index = order[at:at + settings.batch]
        at += settings.batch
        batch = _batch_tensors(samples, index, rng)
        loss = sft_loss(net, *batch, settings)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        total, seen = total + loss.item() * len(index), seen + len(index)
        if (step + 1) % 50 == 0 or step + 1 == settings.steps:
            _log(f"sft step {step + 1}/{settings.steps}: mean loss {total / max(1, seen):.4f}", log)
            total, seen = 0.0, 0
    return net.eval()


def rollout(net: PolicyNet, tool, case, box, settings: RLSettings, generator: torch.Generator):
    """One sampled episode from ``box``: (sum of log-probabilities, reward breakdown)."""
    from ..actions import Stop
    from ..metrics import dice, iou
    from ..rewards import episode_reward

    actions, logps = [box], []
    prediction = tool.predict(actions, None)
    ious, dices = [iou(prediction.mask, case.mask)], [dice(prediction.mask, case.mask)]
    tried: list[tuple[int, int]] = []
    while True:
        if len(actions) >= settings.max_steps:
            actions.append(Stop())  # the limit: the session stops the episode (no choice of the policy)
            break
        feature = features(case.image, prediction.mask, prediction.probability, actions)
        valid = torch.from_numpy(valid_cells(feature, tried))
        maps, stop = net(torch.from_numpy(feature)[None])
        logits = action_logits(maps[0], stop[0], valid) / settings.temperature
        distribution = torch.distributions.Categorical(logits=logits)
        index = distribution.sample() if generator is None else torch.multinomial(
            torch.softmax(logits, -1), 1, generator=generator)[0]
        logps.append(distribution.log_prob(index))
        index = int(index)
        if index == 2 * GRID * GRID:
            actions.append(Stop())
            break
        tried.append(divmod(index % (GRID * GRID), GRID))
        click = click_in_cell(index, prediction.mask)
        actions.append(click)
        prediction = tool.predict(actions, prediction)
        ious.append(iou(prediction.mask, case.mask))
        dices.append(dice(prediction.mask, case.mask))
    reward = episode_reward(actions, ious, dices)
    return (torch.stack(logps).sum() if logps else torch.zeros(())), reward


def train_rl(net: PolicyNet, cases: Sequence, tool, anchor_samples: Optional[PolicySamples] = None,
             settings: RLSettings = RLSettings(), log: Optional[Callable[[str], None]] = None) -> PolicyNet:
    """Group-relative REINFORCE on ``cases`` (``embeddings.TrainingCase``) with the project's reward."""
    from ..policies.oracle import OracleExpert

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    net.train()
    for iteration in range(settings.iterations):
        chosen = rng.choice(len(cases), size=min(settings.cases, len(cases)), replace=False)
        rewards_seen = []
        for index in chosen:
            case = cases[int(index)]
            tool.set_image(case.image, key=case.key)
            box = OracleExpert(case.mask, seed=int(rng.integers(1 << 30))).first_action()
            episodes = [rollout(net, tool, case, box, settings, generator) for _ in range(settings.group)]
            scores = torch.tensor([r.score for _, r in episodes])
            advantage = (scores - scores.mean()) / (scores.std() + 1e-6) if len(episodes) > 1 else scores * 0
            loss = -(advantage * torch.stack([logp for logp, _ in episodes])).mean()
            if anchor_samples is not None and settings.anchor > 0:
                batch = _batch_tensors(anchor_samples, rng.choice(len(anchor_samples), 16), rng)
                loss = loss + settings.anchor * sft_loss(net, *batch)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimiser.step()
            rewards_seen += [float(s) for s in scores]
        _log(f"rl iteration {iteration + 1}/{settings.iterations}: mean reward {np.mean(rewards_seen):.4f} "
             f"over {len(rewards_seen)} episodes", log)
    return net.eval()


# -- weights --------------------------------------------------------------------------------------------------
def save_weights(net: PolicyNet, path: str | Path, meta: Optional[dict] = None) -> str:
    """float16 state dict + config + meta in one torch file, written atomically; returns its SHA-256."""
    from ..outputs import atomic_path

    state = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}
    buffer = io.BytesIO()  # torch.save writes a file's own name into it: a buffer keeps the bytes reproducible
    torch.save({"format": "medsam-agent-learned-policy/1", "config": asdict(net.config), "state": state,
                "meta": meta or {}}, buffer)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def load_weights(path: str | Path) -> tuple[PolicyNet, dict]:
    """The network of a weights file (safe loading); ``ValueError`` naming what is wrong with the file."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != "medsam-agent-learned-policy/1":
            raise ValueError("not a learned-policy weights file (no medsam-agent-learned-policy/1 format tag)")
        net = PolicyNet(NetConfig(**data["config"]))
        net.load_state_dict({k: v.float() for k, v in data["state"].items()}, strict=True)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # unpickling, zip and key errors of a corrupt or foreign file
        raise ValueError(f"{path} is not a usable learned-policy weights file: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return net.eval(), dict(data.get("meta") or {})


# -- the two commands -----------------------------------------------------------------------------------------
def _training_cases(licence_ok_only: bool):
    from ..manifest import SHARED_DATA, read_manifest
    from .embeddings import training_cases

    cases, _ = training_cases(read_manifest(SHARED_DATA / "manifest.jsonl"))
    return [c for c in cases if c.derived_weights_ok or not licence_ok_only]


def samples_for(cases: Sequence, tool, path: Path, episodes: int, log) -> PolicySamples:
    """Expert samples of ``cases``: read from ``path`` when it holds these cases (or from the leave-out run's
    samples of every case, ``RUNS/samples.npz``, made with the same settings), else built there."""
    from .policy_data import build_samples

    wanted = {c.id for c in cases}
    for source in (path, RUNS / "samples.npz"):
        if source.exists():
            samples = PolicySamples.load(source)
            samples = samples.select(np.isin(samples.case, sorted(wanted)))
            if set(samples.case) == wanted:
                _log(f"expert samples: {len(samples)} read from {source}", log)
                return samples
    started = time.perf_counter()
    samples = build_samples(cases, tool, episodes=episodes, progress=False)
    samples.save(path)
    _log(f"expert samples: {len(samples)} from {len(cases)} cases in {time.perf_counter() - started:.0f} s", log)
    return samples


def ship(out: Path, episodes: int = 3, sft: SFTSettings = SFTSettings(), rl: RLSettings = RLSettings(),
         log=print) -> dict:
    """The shipped weights from ../shared/data, licence-ok rows only (``embeddings.allows_derived_weights``)."""
    from .policy_data import expert_tool

    started = time.perf_counter()
    cases = _training_cases(licence_ok_only=True)
    tool = expert_tool()
    samples = samples_for(cases, tool, RUNS / "samples_licence_ok.npz", episodes, log)
    t_sft = time.perf_counter()
    net = train_sft(samples, sft, log=log)
    t_rl = time.perf_counter()
    net = train_rl(net, cases, tool, samples, rl, log=log)
    done = time.perf_counter()
    # no timings in the file: the same command gives the same bytes (and SHA-256) on every run
    meta = {"rows": sorted({c.row_id for c in cases}), "groups": sorted({c.group for c in cases}),
            "licences": sorted({c.licence for c in cases}), "samples": len(samples), "sft": asdict(sft),
            "rl": asdict(rl)}
    sha = save_weights(net, out, meta)
    seconds = {"data": round(t_sft - started, 1), "sft": round(t_rl - t_sft, 1), "rl": round(done - t_rl, 1)}
    _log(f"wrote {out} (sha256 {sha}); seconds {json.dumps(seconds)}", log)
    return {"sha256": sha, "seconds": seconds, **meta}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..policies.learned import WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ship", help="train the shipped weights (licence-ok rows of ../shared/data)")
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--episodes", type=int, default=3, help="expert episodes (box jitter seeds) per case")
    p = sub.add_parser("leave-out", help="leave-datasets-out folds over the 2D groups, evaluated")
    p.add_argument("--out", default=str(RUNS / "leave_out"))
    p.add_argument("--samples", default=str(RUNS / "samples.npz"))
    p.add_argument("--per-group", type=int, default=3, help="held-out cases evaluated per group")
    p.add_argument("--groups", nargs="*", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "ship":
        ship(Path(args.out), args.episodes)
        return 0
    from .policy_leave_out import leave_out, tables

    print(tables(leave_out(Path(args.out), Path(args.samples), args.per_group, args.groups)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
