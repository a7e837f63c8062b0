"""The package, CLI and shared fixtures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longvlm import api
from longvlm.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "longvlm.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("pool", "synth", "build", "stats", "convert", "train", "tune", "slurm", "eval", "demo"):
        assert f"    {name} " in out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_subcommand_has_help_and_an_api(command):
    with pytest.raises(SystemExit) as exit_info:
        main([command.name, "--help"])
    assert exit_info.value.code == 0
    assert callable(getattr(api, "evaluate" if command.name == "eval" else command.name))


# Qwen2.5-VL's added tokens (its tokenizer_config.json): id -> (text, special)
QWEN25VL_ADDED_TOKENS = {
    151643: ("<|endoftext|>", True), 151644: ("<|im_start|>", True), 151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True), 151647: ("<|object_ref_end|>", True), 151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True), 151650: ("<|quad_start|>", True), 151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True), 151653: ("<|vision_end|>", True), 151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True), 151656: ("<|video_pad|>", True), 151657: ("<tool_call>", False),
    151658: ("</tool_call>", False), 151659: ("<|fim_prefix|>", False), 151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False), 151662: ("<|fim_pad|>", False), 151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}


def test_offline_tokenizer_is_qwen25vls_vocabulary_and_special_tokens(qwen_tokenizer):
    """151,643 BPE ids + exactly Qwen2.5-VL's 22 added tokens (none of Qwen3's <think> & co.)."""
    assert (qwen_tokenizer.vocab_size, len(qwen_tokenizer)) == (151643, 151665)
    added = {i: (t.content, t.special) for i, t in qwen_tokenizer.added_tokens_decoder.items()}
    assert added == QWEN25VL_ADDED_TOKENS
    for qwen3_only in ("<tool_response>", "</tool_response>", "<think>", "</think>"):
        ids = qwen_tokenizer(qwen3_only).input_ids
        assert len(ids) > 1 and max(ids) < 151643, (qwen3_only, ids)  # plain text, not one token


def test_offline_tokenizer_gives_qwen25s_ids_for_ordinary_text(qwen_tokenizer):
    """Known Qwen2/2.5 ids: GPT-2-style byte tokens (printable ASCII at ord - 33), digits split one by one."""
    assert qwen_tokenizer("Hello world").input_ids == [9707, 1879]
    assert qwen_tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert qwen_tokenizer("2024").input_ids == [17, 15, 17, 19]
    assert qwen_tokenizer.convert_ids_to_tokens(list(range(94))) == [chr(c) for c in range(33, 127)]
    text = "Table 3: ANLS 0.57 (±0.02) — see p. 12\n\nÜberblick, 概要"
    assert qwen_tokenizer.decode(qwen_tokenizer(text).input_ids) == text


def test_offline_tokenizer_has_qwen25vl_chat_template(qwen_tokenizer):
    text = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")


def test_offline_qwen3vl_tokenizer_has_all_qwen3_tokens_and_qwen3vls_template(qwen3vl_tokenizer_dir):
    """Qwen3-VL keeps every added token of Qwen3's (<think> is one token, 151667); its Instruct template adds
    no default system prompt, renders a system turn, images, an assistant answer and tool calls as Qwen3's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3vl_tokenizer_dir)
    assert len(tok) == 151669 and tok("<think>").input_ids == [151667]
    assert tok("Hello world").input_ids == [9707, 1879]
    image_then_text = [{"type": "image"}, {"type": "text", "text": "Q?"}]
    assert tok.apply_chat_template([{"role": "user", "content": image_then_text}], tokenize=False,
                                   add_generation_prompt=True) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": image_then_text},
            {"role": "assistant", "content": "A.", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}]
    assert tok.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?"
        "<|im_end|>\n<|im_start|>assistant\nA.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n"
        "</tool_call><|im_end|>\n")
    numbered = tok.apply_chat_template([{"role": "user", "content": image_then_text * 2}], tokenize=False,
                                       add_vision_id=True)
    assert "Picture 1: <|vision_start|>" in numbered and "Picture 2: <|vision_start|>" in numbered


def test_tiny_checkpoint_loads_in_transformers(tiny_hf_checkpoint):
    from transformers import Qwen2_5_VLForConditionalGeneration

    index = json.loads((tiny_hf_checkpoint / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_hf_checkpoint)
    assert model.config.vision_config.fullatt_block_indexes == [1, 3]
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads


def test_real_pdfs_are_shipped_with_their_sources(pdf_dir, real_pdfs):
    assert len(real_pdfs) >= 10
    sources = (pdf_dir / "SOURCES.md").read_text()
    for pdf in real_pdfs:
        assert pdf.name in sources
