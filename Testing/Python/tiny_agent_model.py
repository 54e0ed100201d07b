"""A tiny random-weight Qwen3-VL agent for the trainer tests: real transformers classes, the real Qwen3-VL chat
template (the one TRL recognises for tool calling), a byte-level tokenizer with Qwen's special tokens, and
weights set so that sampling answers ``<tool_call>BODY</tool_call>`` with BODY drawn evenly from a few calls.

How: attention and MLP outputs of the language model are zeroed, so the next token depends on the last one
only; embeddings and LM head then chain ``\\n`` -> ``<tool_call>`` -> one of the bodies (each one added token)
-> ``</tool_call>`` -> ``<|im_end|>``. Every turn of a multi-turn rollout ends its prompt with ``\\n``
(``<|im_start|>assistant\\n``), so every turn is one call: rollouts differ in which calls they make.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]


def call_body(name: str, **arguments) -> str:
    return "\n" + json.dumps({"name": name, "arguments": arguments}) + "\n"


def save_tiny_agent(directory: Path, bodies: Sequence[str], seed: int = 0, chat_template: str | None = None,
                    corpus: Sequence[str] = (), dtype: str = "bfloat16", generation: dict | None = None) -> Path:
    """Save the tiny agent to ``directory`` (weights in ``dtype``: BF16 as released; float32 for trainers
    that keep frozen parts in the checkpoint's dtype on the CPU). With no ``bodies`` the weights stay random
    (a model whose output is noise); ``generation``: extra GenerationConfig fields."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import (GenerationConfig, PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from MedSAMAgentLib.policies.mllm_prompt import FOLLOW_UP_TEXT, SYSTEM_PROMPT, first_user_text

    if chat_template is None:
        from trl.chat_template_utils import qwen3_vl_chat_template as chat_template
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([SYSTEM_PROMPT, FOLLOW_UP_TEXT, first_user_text("aorta in CT"), *corpus], trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    plain = ["<tool_call>", "</tool_call>", *bodies]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL + plain}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                                              size={"shortest_edge": 32 * 32, "longest_edge": 1024 * 1024}),
        tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(), chat_template=chat_template)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    if bodies:  # chain \n -> <tool_call> -> a body -> </tool_call> -> <|im_end|>
        newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level "\n": the last prompt token of every turn
        steps = {newline: [ids["<tool_call>"]], ids["<tool_call>"]: [ids[b] for b in bodies]}
        steps.update({ids[b]: [ids["</tool_call>"]] for b in bodies})
        steps[ids["</tool_call>"]] = [ids["<|im_end|>"]]
        with torch.no_grad():
            for name, module in model.named_modules():
                if "language_model" in name and name.endswith(("o_proj", "down_proj")):
                    module.weight.zero_()
            embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
            head.zero_()
            for k, (token, following) in enumerate(steps.items()):
                embed[token] = 0
                embed[token, k] = 1.0
                for nxt in following:  # after RMSNorm the one-hot is 8: logit 16 against 0 for every other token
                    head[nxt, k] = 2.0
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                                               **(generation or {}))
    model.to(getattr(torch, dtype)).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
