"""``longvlm convert verify``: logits of an HF checkpoint vs the Megatron model built from a
converted checkpoint, on a multimodal probe (built-in images of several sizes + text, or the
user's ``--image`` / ``--prompt``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checkpoint_tools.config import VerifyConfig
from checkpoint_tools.hf_io import CheckpointError

PROBE_PROMPT = "Describe each image, then read the page number in the footer."
PROBE_SIZES = ((56, 56), (84, 140), (168, 112))  # (height, width) in pixels: 4, 15 and 24 LLM tokens
PROBE_MAX_PIXELS = 28 * 28 * 256  # the probe checks the mapping, not the resolution: keep it cheap


@dataclass
class VerifyResult:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    tokens: int
    images: int
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (f"verify: {verdict}: max |dlogit| {self.max_abs_diff:.3g} (atol {self.atol:g}), mean "
                f"{self.mean_abs_diff:.3g}, top-1 agreement {self.top1_agreement:.2%} over {self.tokens} tokens, "
                f"{self.images} image(s)")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed})


def builtin_images() -> list:
    """Deterministic test images of different sizes and aspect ratios (gradients plus noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for h, w in PROBE_SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def build_probe(tokenizer_dir: str | Path, images: list | None = None, prompt: str | None = None) -> dict[str, Any]:
    """Inputs for ``Qwen2_5_VLForConditionalGeneration.forward``: one chat turn with ``images`` then
    ``prompt`` (``input_ids``, ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    images = builtin_images() if images is None else images
    processor = Qwen2VLImageProcessorPil(max_pixels=PROBE_MAX_PIXELS)
    vision = processor(images=images, return_tensors="pt")
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt or PROBE_PROMPT}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    merge = processor.merge_size ** 2
    for grid in vision["image_grid_thw"]:  # one <|image_pad|> per merged 2x2 patch group
        text = text.replace("<|image_pad|>", "<|placeholder|>" * int(grid.prod() // merge), 1)
    text = text.replace("<|placeholder|>", "<|image_pad|>")
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {"input_ids": input_ids, "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"], "mm_token_type_ids": (input_ids == image_id).int()}


def _tokenizer_dir(hf_dir: Path, scratch: Path) -> Path:
    if (hf_dir / "tokenizer_config.json").is_file():
        return hf_dir
    from megatron_vlm.tokenizer import write_offline_qwen_tokenizer

    return write_offline_qwen_tokenizer(scratch)


def megatron_logits(ckpt_root: str | Path, iteration: str | None, inputs: dict[str, Any]) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` of the Megatron ``Qwen25VLModel`` loaded from a converted checkpoint
    (TP=1, PP=1 in this process; the checkpoint is global so this checks every tensor)."""
    try:
        from megatron_vlm.models.config import qwen25vl_config_from_hf
        from megatron_vlm.models.qwen25vl import Qwen25VLModel
    except ImportError as err:
        raise CheckpointError(f"verify needs the Megatron model (megatron_vlm.models.qwen25vl): {err}") from None
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint, load_into_model
    from megatron_vlm.runtime import initialize_distributed, process_group

    ckpt = MegatronCheckpoint.open(ckpt_root, iteration)
    with process_group():
        initialize_distributed(environ={})
        model = Qwen25VLModel(qwen25vl_config_from_hf(ckpt.meta["hf_config"], params_dtype=torch.float32,
                                                      use_cpu_initialization=True)).eval()
        load_into_model(model, ckpt)
        with torch.no_grad():
            logits = model(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"])
    return logits.float()


def verify(cfg: VerifyConfig) -> VerifyResult:
    import tempfile

    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf_dir = Path(cfg.hf)
    images = None
    if cfg.image:
        images = []
        for path in cfg.image:
            try:
                images.append(Image.open(path).convert("RGB"))
            except (OSError, ValueError) as err:
                raise CheckpointError(f"--image {path}: cannot read it ({err})") from None
    with tempfile.TemporaryDirectory(prefix="longvlm-verify-") as scratch:
        inputs = build_probe(_tokenizer_dir(hf_dir, Path(scratch)), images, cfg.prompt)
    try:
        hf_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{hf_dir}: transformers cannot load it ({err})") from None
    with torch.no_grad():
        ref = hf_model(**inputs).logits.float()
    del hf_model
    got = megatron_logits(cfg.ckpt, cfg.iteration, inputs)[..., : ref.shape[-1]]
    diff = (ref - got).abs()
    return VerifyResult(max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
                        top1_agreement=(ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
                        tokens=int(inputs["input_ids"].numel()), images=len(inputs["image_grid_thw"]),
                        atol=cfg.atol)
