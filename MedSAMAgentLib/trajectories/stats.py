"""What a set of trajectory logs holds: episodes, actions per episode by type, IoU/Dice at each step, how often
the clinician overrode the agent, and the protocol reward of each episode; printed and plotted (PNG)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..actions import Box, Point, Stop
from ..rewards import episode_reward
from ..trajectory import read_episodes
from .export import log_files

ACTION_KINDS = ("box", "positive", "negative", "stop")


def action_kind(action) -> str:
    if isinstance(action, Box):
        return "box"
    if isinstance(action, Point):
        return "positive" if action.positive else "negative"
    return "stop"


@dataclass
class TrajectoryStats:
    files: int = 0
    episodes: int = 0
    finished: int = 0
    accepted: int = 0
    damaged: int = 0  # episodes with records that could not be read (each named in a warning)
    actions: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in ACTION_KINDS})  # per episode
    decisions: Counter = field(default_factory=Counter)
    ious: list[list[float]] = field(default_factory=list)  # per step index: values over episodes
    dices: list[list[float]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # episodes with IoU/Dice logged
    by_paradigm: Counter = field(default_factory=Counter)

    @property
    def proposals_reviewed(self) -> int:
        return sum(self.decisions[d] for d in ("accept", "override", "reject"))

    @property
    def override_rate(self) -> Optional[float]:
        """Overrides among the agent's reviewed proposals (accepted, overridden or rejected)."""
        n = self.proposals_reviewed
        return None if n == 0 else self.decisions["override"] / n

    def mean_iou(self) -> list[float]:
        return [float(np.mean(v)) for v in self.ious]

    def mean_dice(self) -> list[float]:
        return [float(np.mean(v)) for v in self.dices]

    def as_dict(self) -> dict:
        return {
            "files": self.files, "episodes": self.episodes, "finished": self.finished, "accepted": self.accepted,
            "damaged": self.damaged, "actions_per_episode": {k: float(np.mean(v)) if v else 0.0 for k, v in self.actions.items()},
            "decisions": dict(self.decisions), "override_rate": self.override_rate,
            "mean_iou_by_step": self.mean_iou(), "mean_dice_by_step": self.mean_dice(),
            "episodes_by_step": [len(v) for v in self.ious],
            "mean_reward": float(np.mean(self.rewards)) if self.rewards else None,
            "paradigms": dict(self.by_paradigm),
        }

    def text(self) -> str:
        d = self.as_dict()
        lines = [f"{self.files} log files, {self.episodes} episodes ({self.finished} finished, "
                 f"{self.accepted} accepted" + (f", {self.damaged} with unreadable records" if self.damaged else "")
                 + ")"]
        if d["paradigms"]:
            lines.append("paradigms: " + ", ".join(f"{k} {v}" for k, v in sorted(d["paradigms"].items())))
        per = d["actions_per_episode"]
        box_point = [sum(self.actions[k][i] for k in ACTION_KINDS[:3]) for i in range(self.episodes)]
        lines.append("actions per episode: " + ", ".join(f"{k} {per[k]:.2f}" for k in ACTION_KINDS) +
                     (f"; box/point {np.mean(box_point):.2f} (stop not counted)" if box_point else ""))
        lines.append("decisions: " + (", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "none"))
        rate = self.override_rate
        lines.append("clinician overrode the agent: " + ("no reviewed proposals" if rate is None else
                                                          f"{rate:.1%} of {self.proposals_reviewed} proposals"))
        if self.ious:
            lines.append(f"{'step':>4} {'episodes':>8} {'IoU':>6} {'Dice':>6}")
            for i, (m_iou, m_dice) in enumerate(zip(self.mean_iou(), self.mean_dice()), 1):
                lines.append(f"{i:>4} {len(self.ious[i - 1]):>8} {m_iou:>6.3f} {m_dice:>6.3f}")
        if self.rewards:
            lines.append(f"reward (AGENT_PROTOCOL.md): mean {np.mean(self.rewards):.3f} over {len(self.rewards)} "
                         "episodes")
        return "\n".join(lines)


def collect(paths: Sequence[str | os.PathLike]) -> TrajectoryStats:
    stats = TrajectoryStats()
    files = log_files(paths)
    stats.files = len(files)
    for log in files:
        for episode in read_episodes(log):
            stats.episodes += 1
            stats.finished += episode.end is not None
            stats.accepted += episode.accepted
            stats.damaged += bool(episode.problems)
            paradigm = (episode.header.get("meta") or {}).get("paradigm")
            if paradigm:
                stats.by_paradigm[paradigm] += 1
            counts = Counter()
            actions, ious, dices = [], [], []
            for step in episode.steps:
                stats.decisions[step.decision] += 1
                action = step.applied
                if action is None:
                    continue
                counts[action_kind(action)] += 1
                actions.append(action)
                if isinstance(action, Stop):
                    continue
                iou, dice = step.record.get("iou"), step.record.get("dice")
                if iou is not None and dice is not None:
                    ious.append(float(iou))
                    dices.append(float(dice))
            for kind in ACTION_KINDS:
                stats.actions[kind].append(counts[kind])
            for i, (a, b) in enumerate(zip(ious, dices)):
                while len(stats.ious) <= i:
                    stats.ious.append([])
                    stats.dices.append([])
                stats.ious[i].append(a)
                stats.dices[i].append(b)
            prompts = sum(1 for a in actions if not isinstance(a, Stop))
            if prompts and len(ious) == prompts:
                stats.rewards.append(episode_reward(actions, ious, dices).score)
    return stats


def plot(stats: TrajectoryStats, path: str | os.PathLike) -> Path:
    """Three panels: mean IoU/Dice by step, actions per episode by type, reviewer decisions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    if stats.ious:
        steps = np.arange(1, len(stats.ious) + 1)
        ax.plot(steps, stats.mean_iou(), "o-", label="IoU")
        ax.plot(steps, stats.mean_dice(), "s-", label="Dice")
        for x, n in zip(steps, (len(v) for v in stats.ious)):
            ax.annotate(f"n={n}", (x, 0.02), ha="center", fontsize=8)
        ax.set_xticks(steps)
        ax.legend()
    ax.set(title="mean overlap after each box/point action", xlabel="action", ylim=(0, 1))
    ax = axes[1]
    means = [np.mean(stats.actions[k]) if stats.actions[k] else 0.0 for k in ACTION_KINDS]
    ax.bar(ACTION_KINDS, means, color=["tab:blue", "tab:green", "tab:red", "tab:gray"])
    ax.set(title=f"actions per episode ({stats.episodes} episodes)", ylabel="mean count")
    ax = axes[2]
    names = sorted(stats.decisions)
    ax.bar(names, [stats.decisions[n] for n in names], color="tab:purple")
    rate = stats.override_rate
    ax.set(title="decisions" + ("" if rate is None else f" (override rate {rate:.1%})"), ylabel="steps")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
