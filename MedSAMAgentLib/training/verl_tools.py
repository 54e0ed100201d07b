"""verl (checked with 0.9.1): the environment as ``BaseTool`` classes for verl's ``tool_agent`` loop.

``training/verl/tool_config.yaml`` lists the three classes (their schemas are ``TOOL_SCHEMAS``: given once, by
verl's chat template; the exported prompt's system message holds no tools block). The RL export gives every
row ``agent_name: tool_agent`` and ``extra_info.tools_kwargs`` whose ``create_kwargs`` carry the task (engine
image, ground-truth mask). verl creates and releases a tool instance around *every* call, so the episode lives
on the rollout's ``agent_data`` (one per trajectory), shared by the three tools; after each call its per-action
``ious``/``dices`` and applied ``calls`` go to ``agent_data.extra_fields``, which verl merges into the reward's
``extra_info``: ``rewards.compute_score`` then scores the masks the tool really made. ``reward_kwargs:
{replay_tool: litemedsam}`` makes the reward replay the calls instead where those fields are missing.

The segmentation tool named in the tool config (``config.tool``, a registry name) is built once per process.
"""

from __future__ import annotations

from typing import Any, Optional

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from ..policies.mllm_prompt import TOOL_SCHEMAS
from ..rewards import named_replay_tool
from ..toolcall import ToolCallError
from .environment import SegmentationEnvironment, Task

EPISODE_ATTRIBUTE = "medsam_agent_episode"


def episode_of(agent_data: Any, tool: Any, create_kwargs: dict) -> SegmentationEnvironment:
    """The rollout's episode, started on its first call from the task in ``create_kwargs``."""
    episode = getattr(agent_data, EPISODE_ATTRIBUTE, None)
    if episode is None:
        episode = SegmentationEnvironment(tool)
        episode.reset(Task.from_row(create_kwargs))
        setattr(agent_data, EPISODE_ATTRIBUTE, episode)
    return episode


class MedSAMAgentTool(BaseTool):
    """One of the protocol's tools; ``tool_name`` picks its schema from ``TOOL_SCHEMAS``."""

    tool_name = ""

    def __init__(self, config: dict, tool_schema: Optional[OpenAIFunctionToolSchema] = None):
        super().__init__(config, tool_schema)
        self.segmenter = named_replay_tool(config.get("tool", "litemedsam"), config.get("checkpoint"))
        self._created: dict[str, dict] = {}

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        schema = next(t for t in TOOL_SCHEMAS if t["function"]["name"] == self.tool_name)
        return OpenAIFunctionToolSchema.model_validate(schema)

    async def create(self, instance_id: Optional[str] = None, **kwargs) -> tuple[str, ToolResponse]:
        instance_id, response = await super().create(instance_id)
        self._created[instance_id] = dict(kwargs.get("create_kwargs") or {})
        return instance_id, response

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        agent_data = kwargs.get("agent_data")
        if agent_data is None:
            raise ValueError("MedSAM-Agent tools keep the episode on verl's agent_data: run them in the tool_agent loop")
        episode = episode_of(agent_data, self.segmenter, self._created.get(instance_id, {}))
        try:
            result = episode.call(self.name, parameters)
        except ToolCallError as error:
            return ToolResponse(text=f"Error: {error}"), 0.0, {"refused": 1}
        agent_data.extra_fields["ious"] = list(episode.ious)
        agent_data.extra_fields["dices"] = list(episode.dices)
        agent_data.extra_fields["calls"] = len(episode.actions)
        metrics = {"iou": episode.ious[-1] if episode.ious else 0.0}
        if result.image is None:
            return ToolResponse(text=result.text), 0.0, metrics
        from PIL import Image

        return ToolResponse(text=result.text, image=[Image.fromarray(result.image)]), 0.0, metrics

    async def release(self, instance_id: str, **kwargs) -> None:
        self._created.pop(instance_id, None)


class AddBBoxTool(MedSAMAgentTool):
    tool_name = "add_bbox"


class AddPointTool(MedSAMAgentTool):
    tool_name = "add_point"


class StopActionTool(MedSAMAgentTool):
    tool_name = "stop_action"
