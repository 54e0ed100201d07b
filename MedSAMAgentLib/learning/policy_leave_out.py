"""Leave-datasets-out evaluation of the learned policy (issue 15): for every group of the 2D rows, SFT and RL
on the expert samples of all other groups (every row, whatever its licence: these fold weights are
measurements, never shipped), then ``evaluate --protocol agent``'s episode (``evaluation.run_agent``, the
simulated clinician, the clinician-effort continuation and the clinician alone on the same case) on the
held-out group's cases, with the built-in policy on the same cases in the same run.

Writes ``OUT/log.txt`` (appended and flushed per step), ``OUT/<group>/{sft,rl}.pt``, and after every fold
``OUT/summary.json`` (per policy: ``evaluation.summarize`` blocks per group and overall, training seconds).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from ..evaluation import AgentResult, load_cases, run_agent, summarize
from ..manifest import SHARED_DATA, read_manifest
from .policy_data import PolicySamples, expert_tool
from .policy_training import RLSettings, SFTSettings, save_weights, train_rl, train_sft


def leave_out(out: Path, samples_path: Path, per_group: int = 3, groups: Optional[Sequence[str]] = None,
              sft: SFTSettings = SFTSettings(), rl: RLSettings = RLSettings()) -> dict:
    from ..policies.learned import LearnedPolicy
    from ..registry import make_policy
    from .embeddings import training_cases

    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "log.txt").open("a", encoding="utf-8")

    def log(message: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        log_file.flush()

    manifest = read_manifest(SHARED_DATA / "manifest.jsonl")
    tasks, _ = load_cases([c for c in manifest if c.dims == 2])
    cases, _ = training_cases(manifest)
    samples = PolicySamples.load(samples_path)
    tool = expert_tool()
    chosen = sorted({t.case.group for t in tasks}) if not groups else list(groups)
    held = {g: [t for t in tasks if t.case.group == g][:per_group] for g in chosen}
    results: dict[str, list[AgentResult]] = {"builtin": [], "sft": [], "rl": []}
    seconds: dict[str, dict] = {}
    log(f"leave-out over {len(chosen)} groups, {sum(map(len, held.values()))} held-out cases; "
        f"{len(samples)} samples; sft {sft}; rl {rl}")
    for group in chosen:
        started = time.perf_counter()
        train = samples.select(samples.group != group)
        net = train_sft(train, sft, log=lambda m: log(f"[{group}] {m}"))
        t_sft = time.perf_counter()
        save_weights(net, out / group.replace("/", "_") / "sft.pt", {"held_out": group})
        rl_net = train_rl(copy.deepcopy(net), [c for c in cases if c.group != group], tool, train, rl,
                          log=lambda m: log(f"[{group}] {m}"))
        t_rl = time.perf_counter()
        save_weights(rl_net, out / group.replace("/", "_") / "rl.pt", {"held_out": group})
        seconds[group] = {"sft": round(t_sft - started, 1), "rl": round(t_rl - t_sft, 1), "samples": len(train)}
        policies = {"builtin": make_policy("builtin"),
                    "sft": LearnedPolicy(weights=out / group.replace("/", "_") / "sft.pt"),
                    "rl": LearnedPolicy(weights=out / group.replace("/", "_") / "rl.pt")}
        for task in held[group]:
            for name, policy in policies.items():
                result = run_agent(task, tool, policy)
                results[name].append(result)
                log(f"[{group}] {name} {task.case.id}: dice {result.final_dice:.3f}, accepted {result.accepted}/"
                    f"{result.proposals}, clinician NoC85 {result.clinician_noc85} (alone {result.alone_noc85})")
        seconds[group]["eval"] = round(time.perf_counter() - t_rl, 1)
        log(f"[{group}] fold done: {seconds[group]}")
        summary = {name: summarize(r, "agent", tool.name, name) for name, r in results.items()}
        summary["seconds"] = seconds
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log_file.close()
    return summary


def tables(summary: dict) -> str:
    """The leave-out summary as two markdown tables (per group and overall): acceptance and clinician effort,
    then final Dice at the action limit, for builtin / SFT / SFT+RL beside the clinician alone."""
    names = [n for n in ("builtin", "sft", "rl") if n in summary]
    groups = sorted(summary[names[0]]["groups"]) + ["overall"]

    def block(name: str, group: str) -> dict:
        return summary[name]["overall"] if group == "overall" else summary[name]["groups"].get(group, {})

    def fmt(value, digits=2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = ("| group | n | accept b/s/r | clin. NoC@85 b/s/r | alone NoC@85 | clin. NoC@90 b/s/r | alone NoC@90 |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    rows = [head]
    for g in groups:
        b = [block(n, g) for n in names]
        rows.append(f"| {g} | {b[0].get('n', 0)} | " + " / ".join(fmt(x.get("acceptance_rate")) for x in b)
                    + " | " + " / ".join(fmt(x.get("clinician_noc85")) for x in b)
                    + f" | {fmt(b[0].get('alone_noc85'))} | " + " / ".join(fmt(x.get("clinician_noc90")) for x in b)
                    + f" | {fmt(b[0].get('alone_noc90'))} |")
    rows += ["", "| group | n | Dice@5 actions b/s/r | alone Dice@5 | agent actions b/s/r | clinician actions b/s/r |",
             "| --- | --- | --- | --- | --- | --- |"]
    for g in groups:
        b = [block(n, g) for n in names]
        rows.append(f"| {g} | {b[0].get('n', 0)} | " + " / ".join(fmt(x.get("final_dice"), 3) for x in b)
                    + f" | {fmt(b[0].get('alone_dice_at_steps'), 3)} | "
                    + " / ".join(fmt(x.get("mean_agent_actions")) for x in b) + " | "
                    + " / ".join(fmt(x.get("mean_clinician_actions")) for x in b) + " |")
    return "\n".join(rows)
