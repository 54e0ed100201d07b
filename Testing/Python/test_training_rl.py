"""The RL stage runs: 2 steps of TRL GRPO on the CPU with a tiny random-weight Qwen3-VL (real transformers
classes, the real Qwen3-VL chat template) through the multi-turn environment on 2 exported cases, every
reward computed from the masks the segmentation tool made for the policy's calls; and the environment itself.

The trainer is TRL's own ``GRPOTrainer`` with ``environment_factory`` (TRL 1.16.0, which shares the project
environment's transformers 5.24.0; it is in the ``training`` extra).
"""

from __future__ import annotations

import numpy as np
import pytest

from MedSAMAgentLib.manifest import BUNDLED_DATA
from MedSAMAgentLib.metrics import iou
from MedSAMAgentLib.policies.mllm_prompt import FOLLOW_UP_TEXT, TOOL_SCHEMAS, observation_image
from MedSAMAgentLib.rewards import episode_reward_from_masks, make_trl_reward
from MedSAMAgentLib.toolcall import ToolCallError
from MedSAMAgentLib.trajectories.export import export_verl
from MedSAMAgentLib.trajectories.generate import GenerateSettings, generate
from MedSAMAgentLib.training.environment import SegmentationEnvironment, Task
from tiny_agent_model import call_body, save_tiny_agent

CASES = ["sam-med2d/s0114_111_aorta_000", "sam-med2d/amos_0006_90_liver_000"]
CHEAP = GenerateSettings(paradigms=("box-to-point",), seed=3, max_steps=2, resample=0)
BODIES = [call_body("add_bbox", bbox_2d=[250, 250, 750, 750]),
          call_body("add_point", point_2d=[500, 500], point_type="positive"),
          call_body("add_bbox", bbox_2d=[100, 400, 400, 900]),
          call_body("stop_action")]


@pytest.fixture(scope="module")
def rl_export(tmp_path_factory, litemedsam):
    out = tmp_path_factory.mktemp("rl")
    report = generate(BUNDLED_DATA / "manifest.jsonl", out / "gen", CHEAP, tool=litemedsam, progress=False,
                      cases=CASES)
    assert report.count("done") == 2, report.summary()
    export = export_verl([out / "gen" / "logs"], out / "export")
    assert export.samples == 2
    return export.files[0]


def test_environment_calls_the_tool_and_records_iou(litemedsam, bundled):
    case = bundled[CASES[0]]
    env = SegmentationEnvironment(litemedsam)
    env.reset(Task(case.image, case.ground_truth, case.case.target))
    first = env.call("add_bbox", {"bbox_2d": [100, 100, 900, 900]})
    assert first.text == FOLLOW_UP_TEXT and not first.done
    assert np.array_equal(first.image, observation_image(case.image, env.masks[0]))
    with pytest.raises(ToolCallError, match="point_type"):
        env.call("add_point", {"point_2d": [5, 5], "point_type": "maybe"})  # refused, nothing recorded
    env.call("add_point", {"point_2d": [500, 500], "point_type": "negative"})
    assert env.call("stop_action").done and env.call("add_bbox", {"bbox_2d": [0, 0, 9, 9]}).done
    assert len(env.masks) == len(env.ious) == 2 and len(env.actions) == 3  # nothing after stop
    assert env.ious == [iou(m, case.ground_truth) for m in env.masks]
    expected = episode_reward_from_masks(env.actions, env.masks, case.ground_truth)
    assert env.reward().score == pytest.approx(expected.score)


def test_trl_tool_schemas_are_the_protocol_schemas():
    from transformers.utils import get_json_schema

    from MedSAMAgentLib.training.trl_env import MedSAMAgentEnv

    env = MedSAMAgentEnv(None)
    for method, schema in zip((env.add_bbox, env.add_point, env.stop_action), TOOL_SCHEMAS):
        rendered = get_json_schema(method)["function"]
        wanted = schema["function"]
        assert rendered["name"] == wanted["name"] and rendered["description"] == wanted["description"]
        for arg, spec in wanted["parameters"]["properties"].items():
            got = rendered["parameters"]["properties"][arg]
            assert got["description"] == spec["description"] and got["type"] == spec["type"]
            assert got.get("enum") == spec.get("enum")


def test_trl_dataset_has_an_image_column_and_no_placeholder(rl_export):
    from MedSAMAgentLib.training.trl_env import trl_dataset

    data = trl_dataset(rl_export)
    row = data[0]
    assert len(row["images"]) == 1 and row["images"][0].size == (512, 512)
    text = " ".join(m["content"] for m in row["prompt"])
    assert "<image>" not in text and "<tools>" not in text  # TRL adds the image part and the tools block


def test_trl_grpo_two_steps_multi_turn(rl_export, litemedsam, tmp_path, bundled):
    pytest.importorskip("trl")
    import warnings

    from trl import GRPOConfig, GRPOTrainer

    from MedSAMAgentLib.training.trl_env import environment_factory, trl_dataset

    model_dir = save_tiny_agent(tmp_path / "tiny-qwen3vl", BODIES)
    adapter = make_trl_reward()
    seen = []

    def medsam_agent_reward(prompts, completions, **kwargs):
        scores = adapter(prompts, completions, **kwargs)
        seen.extend(zip(completions, kwargs["engine_image"], kwargs["mask"], scores))
        return scores

    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=1400, max_tool_calling_iterations=3,
                      learning_rate=1e-5, beta=0.0, logging_steps=1, save_strategy="no", report_to="none",
                      use_cpu=True, bf16=False, dataloader_num_workers=0, seed=0, shuffle_dataset=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[medsam_agent_reward], args=args,
                              train_dataset=trl_dataset(rl_export), environment_factory=environment_factory(litemedsam))
        trainer.train()
    assert trainer.state.global_step == 2
    assert len(seen) == 8  # 2 steps x 2 cases x 2 generations
    rewards = [score for *_, score in seen]
    assert len(set(np.round(rewards, 6))) > 1, rewards  # the rollouts differ, and so do their rewards
    turns = [sum(m["role"] == "tool" for m in completion) for completion, *_ in seen]
    assert max(turns) >= 2  # multi-turn: tool answers (overlay images) came back and the policy went on
    replay = make_trl_reward(litemedsam)
    for completion, engine_image, mask, score in seen:
        calls = [c for m in completion if m["role"] == "assistant" for c in (m.get("tool_calls") or [])]
        assert calls, "every completion of the tiny agent is tool calls"
        direct = replay(["p"], [completion], engine_image=[engine_image], ground_truth=[mask])[0]
        assert score == pytest.approx(direct, abs=1e-9)
    assert any(score > 0.2 for score in rewards)  # some masks overlap the target: rewards are not format-only
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logged) == 2
