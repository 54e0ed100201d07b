"""verl's multi-turn RL pieces through verl's own interfaces (verl 0.9.1, in .venv-verl: scripts/make_trainer_env.sh
verl; skipped where verl does not import): the tool classes built by verl's tool registry from
training/verl/tool_config.yaml, a rollout's calls parsed by verl's Hermes tool parser and run by the tool agent
loop's own ``_call_tool`` (create / execute / release, per call) on the exported row's ``tools_kwargs``, and the
reward loaded by verl's custom-reward loader with the config's ``reward_kwargs``. The scores agree with the
environment's own reward, with a replay of the calls, and with TRL's adapter on the same calls.
A whole verl run needs GPUs (training/verl/run_grpo_gpu.sh, not run here).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

verl = pytest.importorskip("verl")

from MedSAMAgentLib.actions import Box  # noqa: E402
from MedSAMAgentLib.geometry import Letterbox  # noqa: E402
from MedSAMAgentLib.manifest import BUNDLED_DATA  # noqa: E402
from MedSAMAgentLib.policies.mllm_prompt import FOLLOW_UP_TEXT, TOOL_SCHEMAS  # noqa: E402
from MedSAMAgentLib.rewards import decode_mask_like, make_trl_reward  # noqa: E402
from MedSAMAgentLib.trajectories.export import export_verl  # noqa: E402
from MedSAMAgentLib.trajectories.generate import GenerateSettings, generate  # noqa: E402
from tiny_agent_model import call_body, save_tiny_agent  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CASE = "sam-med2d/s0114_111_aorta_000"
MINIMAL_TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + (m.content if m.content is string "
                    "else '') + '<|im_end|>\\n' }}{%- endfor %}")


def turns(bbox: list[int]) -> list[str]:
    """The policy's answers, one turn each: a box, two calls in one turn, a refused call, stop."""
    x = (bbox[0] + bbox[2]) // 2
    y = (bbox[1] + bbox[3]) // 2
    return [
        "<tool_call>" + call_body("add_bbox", bbox_2d=bbox) + "</tool_call>",
        "<tool_call>" + call_body("add_point", point_2d=[x, y], point_type="positive") + "</tool_call>\n"
        "<tool_call>" + call_body("add_point", point_2d=[5, 5], point_type="negative") + "</tool_call>",
        "<tool_call>" + call_body("add_point", point_2d=[5, 5], point_type="maybe") + "</tool_call>",  # refused
        "<tool_call>" + call_body("stop_action") + "</tool_call>",
    ]


@pytest.fixture(scope="module")
def row(tmp_path_factory, litemedsam):
    import pandas as pd

    out = tmp_path_factory.mktemp("verl")
    settings = GenerateSettings(paradigms=("box-to-point",), seed=2, max_steps=2, resample=0)
    generate(BUNDLED_DATA / "manifest.jsonl", out / "gen", settings, tool=litemedsam, progress=False, cases=[CASE])
    path = export_verl([out / "gen" / "logs"], out / "export").files[0]
    return pd.read_parquet(path).iloc[0].to_dict()  # as verl's RLHFDataset reads it (datasets -> pandas rows)


def test_tool_config_builds_the_protocol_tools():
    from verl.tools.tool_registry import initialize_tools_from_config

    tools = initialize_tools_from_config(str(ROOT / "training" / "verl" / "tool_config.yaml"))
    assert [t.name for t in tools] == ["add_bbox", "add_point", "stop_action"]
    for tool, schema in zip(tools, TOOL_SCHEMAS):  # verl's schema model keeps no minItems/maxItems
        rendered, wanted = tool.tool_schema.model_dump(exclude_none=True)["function"], schema["function"]
        assert rendered["name"] == wanted["name"] and rendered["description"] == wanted["description"]
        assert rendered["parameters"]["required"] == wanted["parameters"]["required"]
        for arg, spec in wanted["parameters"]["properties"].items():
            got = rendered["parameters"]["properties"][arg]
            assert (got["type"], got["description"], got.get("enum")) == (spec["type"], spec["description"],
                                                                          spec.get("enum"))


def test_export_is_multi_turn_for_verl(row):
    assert row["agent_name"] == "tool_agent"
    assert set(row["extra_info"]["tools_kwargs"]) == {"add_bbox", "add_point", "stop_action"}
    system = row["prompt"][0]["content"]
    assert "<tools>" not in system  # verl's chat template renders the tool schemas: given once


def test_rollout_through_verl_tool_loop_and_reward(row, tmp_path, litemedsam):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.tool_agent_loop import AgentData, ToolAgentLoop
    from verl.experimental.agent_loop.tool_parser import ToolParser
    from verl.tools.tool_registry import initialize_tools_from_config
    from verl.trainer.ppo.reward import get_custom_reward_fn

    tokenizer = AutoTokenizer.from_pretrained(save_tiny_agent(tmp_path / "tiny", [], chat_template=MINIMAL_TEMPLATE))
    tools = initialize_tools_from_config(str(ROOT / "training" / "verl" / "tool_config.yaml"))
    loop = object.__new__(ToolAgentLoop)  # just the call path of verl's tool agent loop
    loop.tools = {tool.name: tool for tool in tools}
    loop.max_tool_response_length, loop.tool_response_truncate_side = 1024, "middle"
    parser = ToolParser.get_tool_parser("hermes", tokenizer)
    tools_kwargs = row["extra_info"]["tools_kwargs"]
    agent_data = AgentData(messages=[], image_data=[], video_data=None, audio_data=None, mm_processor_kwargs=None,
                           metrics={}, request_id="rollout-0", tools_kwargs=tools_kwargs)
    answers, conversation = [], []
    truth = decode_mask_like(row["mask"])
    ys, xs = np.nonzero(truth)
    box = Letterbox(*truth.shape).action_to_model(Box(xs.min(), ys.min(), xs.max(), ys.max()))["bbox_2d"]
    TURNS = turns(box)

    async def rollout():
        for text in TURNS:
            _, calls = await parser.extract_tool_calls(tokenizer.encode(text), [t.tool_schema for t in tools])
            conversation.append({"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in calls]})
            for call in calls:
                response, _, _ = await loop._call_tool(call, tools_kwargs, agent_data)
                answers.append(response)
                conversation.append({"role": "tool", "content": response.text})

    asyncio.run(rollout())
    assert len(answers) == 5
    assert answers[0].text == FOLLOW_UP_TEXT and np.asarray(answers[0].image[0]).shape == (512, 512, 3)
    assert answers[3].text.startswith("Error") and answers[4].image is None  # refused call; stop
    episode = agent_data.medsam_agent_episode
    assert agent_data.extra_fields["ious"] == episode.ious and len(episode.ious) == 3
    assert agent_data.extra_fields["calls"] == 4  # box, 2 points, stop

    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": str(ROOT / "MedSAMAgentLib" / "trajectories" / "verl_reward.py"), "name": "compute_score",
        "reward_kwargs": {"replay_tool": "litemedsam"}}}})
    reward = get_custom_reward_fn(config)
    solution = tokenizer.decode(tokenizer.encode("\n".join(TURNS)), skip_special_tokens=True)
    extra_info = dict(row["extra_info"])
    with_fields = reward(data_source=row["data_source"], solution_str=solution,
                         ground_truth=row["reward_model"]["ground_truth"],
                         extra_info={**extra_info, **agent_data.extra_fields})  # as the reward manager merges them
    replayed = reward(data_source=row["data_source"], solution_str=solution,
                      ground_truth=row["reward_model"]["ground_truth"], extra_info=extra_info)
    untagged = reward(data_source=row["data_source"], ground_truth=row["reward_model"]["ground_truth"],
                      solution_str=solution.replace("<tool_call>", "").replace("</tool_call>", ""),
                      extra_info={**extra_info, **agent_data.extra_fields})
    trl = make_trl_reward()(["p"], [conversation], ground_truth=[row["mask"]], ious=[episode.ious],
                            dices=[episode.dices])[0]
    expected = episode.reward().score
    assert max(episode.ious) > 0.5 and expected > 0.5, episode.ious  # real masks, not the empty-mask fallback
    assert [with_fields, replayed, untagged, trl] == pytest.approx([expected] * 4, abs=1e-9)
