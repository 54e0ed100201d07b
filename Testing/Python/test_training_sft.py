"""The SFT stage: the export, moved to another folder, loads through LLaMA-Factory's own dataset code
(``get_dataset``) with the repository's config (training/llamafactory/sft_lora.yaml): every sample kept whole,
images matched, the trained text equal to Qwen3-VL's chat template. LLaMA-Factory 0.9.5 pins transformers<=5.6,
so it lives in its own environment (scripts/make_trainer_env.sh llamafactory); without it this is skipped.
The 2-step training run is scripts/run_llamafactory_sft_smoke.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from MedSAMAgentLib.manifest import BUNDLED_DATA
from MedSAMAgentLib.trajectories.export import export_llamafactory
from MedSAMAgentLib.trajectories.generate import GenerateSettings, generate

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CASES = ["sam-med2d/s0114_111_aorta_000", "sam-med2d/amos_0006_90_liver_000"]


def llamafactory_python() -> str | None:
    try:
        import llamafactory  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    candidate = os.environ.get("MEDSAM_AGENT_LLAMAFACTORY_PYTHON") or str(ROOT / ".venv-llamafactory" / "bin" / "python")
    return candidate if Path(candidate).is_file() else None


def test_configs_name_the_nothink_template_and_a_whole_episode_cutoff():
    import yaml

    for variant in ("lora", "full"):
        config = yaml.safe_load((ROOT / "training" / "llamafactory" / f"sft_{variant}.yaml").read_text())
        assert config["template"] == "qwen3_vl_nothink" and config["finetuning_type"] == variant
        assert config["cutoff_len"] >= 4096 and config["image_max_pixels"] == 512 * 512
        assert config["dataset"] == "medsam_agent_sft"


def test_export_loads_through_llamafactory(tmp_path, litemedsam):
    python = llamafactory_python()
    if python is None:
        pytest.skip("LLaMA-Factory is not installed (scripts/make_trainer_env.sh llamafactory)")
    from tiny_agent_model import call_body, save_tiny_agent

    settings = GenerateSettings(paradigms=("box-to-point", "sequential-click"), seed=5, resample=1)
    generate(BUNDLED_DATA / "manifest.jsonl", tmp_path / "gen", settings, tool=litemedsam, progress=False, cases=CASES)
    report = export_llamafactory([tmp_path / "gen" / "logs"], tmp_path / "first")
    moved = tmp_path / "elsewhere" / "sft"
    moved.parent.mkdir()
    shutil.move(tmp_path / "first", moved)  # relative image paths: the moved export still loads
    model = save_tiny_agent(tmp_path / "tiny", [call_body("stop_action")])
    result = subprocess.run([python, str(HERE / "llamafactory_check.py"), str(ROOT / "training" / "llamafactory" /
                             "sft_lora.yaml"), str(moved), str(model), str(tmp_path / "work")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["problems"] == [] and summary["loaded"] == report.samples == 4, summary
    assert summary["max_tokens"] < summary["cutoff_len"]
