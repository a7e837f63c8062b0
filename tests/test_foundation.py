"""The package, CLI and shared fixtures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from longvlm import api
from longvlm.cli import COMMANDS, NOT_IMPLEMENTED_EXIT, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "longvlm.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("pool", "synth", "build", "stats", "convert", "train", "tune", "slurm", "eval", "demo"):
        assert f"    {name} " in out


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.module is None], ids=lambda c: c.name)
def test_unimplemented_subcommands_exit_nonzero(command, capsys):
    assert main([command.name]) == NOT_IMPLEMENTED_EXIT
    assert "not implemented yet" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_subcommand_has_help_and_an_api(command):
    with pytest.raises(SystemExit) as exit_info:
        main([command.name, "--help"])
    assert exit_info.value.code == 0
    assert callable(getattr(api, "evaluate" if command.name == "eval" else command.name))


def test_offline_tokenizer_has_qwen25vl_ids_and_template(qwen_tokenizer):
    ids = qwen_tokenizer.convert_tokens_to_ids(
        ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"])
    assert ids == [151644, 151645, 151652, 151653, 151655]
    text = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
        tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")


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
