"""TRL (checked with 1.16.0): multi-turn GRPO through ``GRPOTrainer(environment_factory=...)``.

TRL renders the environment's public methods as the tools of the chat template, parses each completion's
``<tool_call>`` blocks into ``tool_calls``, calls the methods, and appends their answers (image + text parts)
as ``tool`` messages, so the policy sees the overlay after each action as in ``mllm_prompt``. The dataset
(``trl_dataset``) is the RL export with the image as a proper ``images`` column and a prompt without any
``<image>`` placeholder (TRL inserts the image part itself), and a system message without the tools block
(the template renders it from the methods below, whose schemas are ``TOOL_SCHEMAS``).

The reward is ``rewards.make_trl_reward()``: it parses the completion's ``tool_calls`` and takes the IoU/Dice
that the rollout's environment recorded (TRL passes ``environments`` to reward functions)::

    trainer = GRPOTrainer(model=..., reward_funcs=[make_trl_reward()], train_dataset=trl_dataset(parquet),
                          environment_factory=environment_factory(make_tool("litemedsam")), args=...)
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..policies.mllm_prompt import TOOL_SCHEMAS, first_user_text
from .environment import SegmentationEnvironment, Task, trainer_system_prompt


def _schema(name: str) -> dict:
    return next(t["function"] for t in TOOL_SCHEMAS if t["function"]["name"] == name)


def _google_docstring(name: str) -> str:
    """The Google-style docstring transformers turns back into ``TOOL_SCHEMAS[name]`` (one place for it)."""
    schema = _schema(name)
    lines = [schema["description"]]
    properties = schema["parameters"]["properties"]
    if properties:
        lines += ["", "Args:"]
        for arg, spec in properties.items():
            choices = f' (choices: {list(spec["enum"])!r})'.replace("'", '"') if "enum" in spec else ""
            lines.append(f"    {arg}: {spec['description']}{choices}")
    return "\n".join(lines)


class MedSAMAgentEnv:
    """One rollout's episode, for TRL. ``reset`` receives the dataset row (``trl_dataset`` columns)."""

    def __init__(self, tool: Any):
        self.episode = SegmentationEnvironment(tool)

    def reset(self, **row: Any) -> None:
        self.episode.reset(Task.from_row(row))
        return None  # the prompt already holds the image and the target

    def _answer(self, name: str, arguments: dict) -> Any:
        from PIL import Image

        result = self.episode.call(name, arguments)
        if result.image is None:
            return result.text
        return [{"type": "image", "image": Image.fromarray(result.image)}, {"type": "text", "text": result.text}]

    def add_bbox(self, bbox_2d: list[int]) -> list:
        return self._answer("add_bbox", {"bbox_2d": bbox_2d})

    def add_point(self, point_2d: list[int], point_type: str) -> list:
        return self._answer("add_point", {"point_2d": point_2d, "point_type": point_type})

    def stop_action(self) -> str:
        return self._answer("stop_action", {})


for _name in ("add_bbox", "add_point", "stop_action"):
    getattr(MedSAMAgentEnv, _name).__doc__ = _google_docstring(_name)


def environment_factory(tool: Any) -> Callable[[], MedSAMAgentEnv]:
    """TRL's ``environment_factory``: every rollout gets its own episode on the one shared tool."""
    return lambda: MedSAMAgentEnv(tool)


def trl_rows(parquet: str | os.PathLike) -> list[dict]:
    """The RL export's rows as TRL examples: conversational ``prompt`` (text only), ``images`` (PNG bytes of the
    first observation), and the columns ``reset`` needs (``engine_image``, ``mask``, ``target_description``)."""
    import pyarrow.parquet as pq

    rows = []
    for row in pq.read_table(parquet).to_pylist():
        rows.append({
            "prompt": [{"role": "system", "content": trainer_system_prompt()},
                       {"role": "user", "content": first_user_text(row["target_description"])}],
            "images": [image["bytes"] for image in row["images"]],
            "engine_image": row["engine_image"],
            "mask": row["mask"],
            "target_description": row["target_description"],
            "id": row["id"],
        })
    return rows


def trl_dataset(parquet: str | os.PathLike):
    """``trl_rows`` as a ``datasets.Dataset`` whose ``images`` column is a list of ``Image`` features (PIL on
    access), the form GRPOTrainer accepts; the engine image and mask stay PNG bytes."""
    import datasets

    rows = trl_rows(parquet)
    features = datasets.Features({
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "images": datasets.Sequence(datasets.Image()),
        "engine_image": datasets.Value("binary"),
        "mask": datasets.Value("binary"),
        "target_description": datasets.Value("string"),
        "id": datasets.Value("string"),
    })
    data = {key: [row[key] for row in rows] for key in features}
    data["images"] = [[{"bytes": b, "path": None} for b in row["images"]] for row in rows]
    return datasets.Dataset.from_dict(data, features=features)
