"""Load an SFT export through LLaMA-Factory's own dataset code with the repository's config, and check it.

Run with the LLaMA-Factory environment's python (``.venv-llamafactory``, scripts/make_trainer_env.sh):
``python llamafactory_check.py CONFIG EXPORT MODEL WORKDIR`` prints one JSON line. Checked, for every sample:
it is kept (none dropped or cut by ``cutoff_len``), one vision block per image, roles alternate (LLaMA-Factory
refuses otherwise), every answer is in the labels, and the text equals the model's own Qwen3-VL chat template
rendering of the same conversation (image-token runs collapsed), so training sees what inference shows.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def main(config: str, export: str, model: str, workdir: str) -> dict:
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = yaml.safe_load(Path(config).read_text())
    args.update(model_name_or_path=model, dataset_dir=export, media_dir=export, output_dir=str(Path(workdir) / "out"),
                bf16=False, preprocessing_num_workers=1, overwrite_cache=True, report_to="none")
    model_args, data_args, training_args, _, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, "sft", **tokenizer_module)
    dataset = module["train_dataset"]
    samples = json.loads((Path(export) / "medsam_agent_sft.json").read_text())
    vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    problems, lengths = [], []
    if len(dataset) != len(samples):
        problems.append(f"{len(dataset)} of {len(samples)} samples loaded")
    for index, (row, sample) in enumerate(zip(dataset, samples)):
        ids, labels = row["input_ids"], row["labels"]
        lengths.append(len(ids))
        if ids.count(vision_start) != len(sample["images"]):
            problems.append(f"sample {index}: {ids.count(vision_start)} vision blocks for {len(sample['images'])} images")
        if len(ids) >= data_args.cutoff_len:
            problems.append(f"sample {index}: cut at cutoff_len {data_args.cutoff_len}")
        answers = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
        learnt = tokenizer.decode([t for t in labels if t >= 0])
        # every answer is learnt, each closed by <|im_end|> (LLaMA-Factory's assistant slot ends "<|im_end|>\n")
        if not all(f"{answer}<|im_end|>" in learnt for answer in answers):
            problems.append(f"sample {index}: an answer is not in the labels: ...{learnt[-120:]!r}")
        text = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", tokenizer.decode(ids))
        chat = [{"role": m["role"], "content": m["content"] if m["role"] != "user" else
                 [{"type": "image"} if part == "<image>" else {"type": "text", "text": part}
                  for part in re.split("(<image>)", m["content"]) if part]} for m in sample["messages"]]
        reference = processor.apply_chat_template(chat, tokenize=False)
        if text.strip() != reference.strip():
            problems.append(f"sample {index}: the trained text differs from the chat template's")
        if "<think>" in text:
            problems.append(f"sample {index}: <think> in the trained text")
    return {"samples": len(samples), "loaded": len(dataset), "max_tokens": max(lengths, default=0),
            "cutoff_len": data_args.cutoff_len, "problems": problems}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
