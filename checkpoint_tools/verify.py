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
from checkpoint_tools.hf_io import CheckpointError, HFCheckpoint
from megatron_vlm.errors import ConfigError
from megatron_vlm.formats.checkpoint import MegatronCheckpoint
from megatron_vlm.models.hf_config import VLArch
from megatron_vlm.models.registry import read_arch

PROBE_PROMPT = "Describe each image, then read the page number in the footer."
PROBE_SIZES = ((56, 56), (84, 140), (168, 112))  # (height, width) in pixels: 4, 15 and 24 LLM tokens at 28 px
PROBE_MAX_TOKENS = 256  # per image: the probe checks the mapping, not the resolution: keep it cheap


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


def _vision_inputs(arch: VLArch, images: list | None) -> tuple[dict[str, Any], list[int]]:
    """Pixel values and grids of the probe images (``transformers``' image processor with the family's
    geometry), and the ``<|image_pad|>`` count of each."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    geometry = arch.family.geometry
    processor = Qwen2VLImageProcessorPil(
        patch_size=geometry.patch_size, merge_size=geometry.merge_size, temporal_patch_size=geometry.temporal_patch_size,
        image_mean=list(geometry.mean), image_std=list(geometry.std), min_pixels=geometry.factor ** 2 * 4,
        max_pixels=geometry.factor ** 2 * PROBE_MAX_TOKENS)
    vision = processor(images=builtin_images() if images is None else images, return_tensors="pt")
    merge = processor.merge_size ** 2  # one <|image_pad|> per merged 2x2 patch group
    return vision, [int(grid.prod() // merge) for grid in vision["image_grid_thw"]]


def _probe(input_ids: torch.Tensor, vision: dict[str, Any], image_id: int) -> dict[str, Any]:
    return {"input_ids": input_ids, "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"], "mm_token_type_ids": (input_ids == image_id).int()}


def build_probe(tokenizer_dir: str | Path, arch: VLArch, images: list | None = None,
                prompt: str | None = None) -> dict[str, Any]:
    """Inputs for the family's ``transformers`` model's ``forward``: one chat turn with ``images`` then
    ``prompt`` (``input_ids``, ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vision, pads = _vision_inputs(arch, images)
    content = [{"type": "image"} for _ in pads] + [{"type": "text", "text": prompt or PROBE_PROMPT}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    for n in pads:
        text = text.replace("<|image_pad|>", "<|placeholder|>" * n, 1)
    text = text.replace("<|placeholder|>", "<|image_pad|>")
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return _probe(input_ids, vision, tokenizer.convert_tokens_to_ids("<|image_pad|>"))


PROBE_TEXT_TOKENS = 12  # text tokens before and after the images in a probe built from token ids


def config_probe(arch: VLArch, images: list | None = None) -> dict[str, Any]:
    """A probe built from the model config's own token ids, for a checkpoint without a tokenizer:
    seeded ordinary text ids, each image as ``<|vision_start|> <|image_pad|>*n <|vision_end|>``, more
    text ids. Any checkpoint can be verified with it, whatever its vocabulary."""
    vision, pads = _vision_inputs(arch, images)
    special = (arch.vision_start_token_id, arch.vision_end_token_id, arch.image_token_id, arch.video_token_id)
    ordinary = np.arange(min(arch.vocab_size, *special))  # Qwen's special ids come last
    if len(ordinary) < 2:
        raise CheckpointError(f"config.json: no ordinary token ids below the special ones {special}")
    text = np.random.default_rng(0).choice(ordinary, 2 * PROBE_TEXT_TOKENS).tolist()
    seq = text[:PROBE_TEXT_TOKENS]
    for n in pads:
        seq += [arch.vision_start_token_id] + [arch.image_token_id] * n + [arch.vision_end_token_id]
    seq += text[PROBE_TEXT_TOKENS:]
    return _probe(torch.tensor([seq], dtype=torch.long), vision, arch.image_token_id)


def tokenizer_misfits(tokenizer_dir: Path, arch: VLArch, inputs: dict[str, Any]) -> list[str]:
    """Why a tokenizer's ids are not the model's (another model's tokenizer); empty if it fits."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    problems = []
    for token, key in (("<|image_pad|>", "image_token_id"), ("<|vision_start|>", "vision_start_token_id"),
                       ("<|vision_end|>", "vision_end_token_id")):
        if tokenizer.convert_tokens_to_ids(token) != getattr(arch, key):
            problems.append(f"{token} is id {tokenizer.convert_tokens_to_ids(token)}, config.json's {key} is "
                            f"{getattr(arch, key)}")
    top = int(inputs["input_ids"].max())
    if top >= arch.vocab_size:
        problems.append(f"the probe has token id {top}, the model's vocabulary has {arch.vocab_size}")
    return problems


def probe_for(hf_dir: Path, arch: VLArch, images: list | None, prompt: str | None) -> dict[str, Any]:
    """The probe: from the checkpoint's own tokenizer if it has one (refused if it does not fit the
    model); else from config.json's token ids; a ``prompt`` without a tokenizer of its own is
    tokenized with the family's offline tokenizer if that fits the model."""
    import tempfile

    from megatron_vlm.tokenizer import write_offline_tokenizer

    if (hf_dir / "tokenizer_config.json").is_file():
        inputs = build_probe(hf_dir, arch, images, prompt)
        if problems := tokenizer_misfits(hf_dir, arch, inputs):
            raise CheckpointError(f"{hf_dir}: its tokenizer does not fit the model ({'; '.join(problems)}); use the "
                                  "model's own tokenizer, or remove its tokenizer files to verify with a probe "
                                  "built from config.json's token ids")
        return inputs
    if not prompt:
        return config_probe(arch, images)
    with tempfile.TemporaryDirectory(prefix="longvlm-verify-") as scratch:
        offline = write_offline_tokenizer(Path(scratch), arch.model_type)
        inputs = build_probe(offline, arch, images, prompt)
        if problems := tokenizer_misfits(offline, arch, inputs):
            raise CheckpointError(f"--prompt needs a tokenizer: {hf_dir} has none, and the {arch.family.name} tokenizer "
                                  f"does not fit this model ({'; '.join(problems)}); add the model's tokenizer "
                                  "or leave --prompt out")
    return inputs


def megatron_logits(ckpt_root: str | Path, iteration: str | None, inputs: dict[str, Any]) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` of the family's Megatron model loaded from a converted checkpoint
    (TP=1, PP=1 in this process; the checkpoint is global so this checks every tensor)."""
    from megatron_vlm.model_builder import build_vlm
    from megatron_vlm.runtime import process_group

    with process_group(device="cpu"):  # fp32 on the CPU, like the transformers reference, also on a GPU machine
        model = build_vlm(checkpoint=ckpt_root, iteration=iteration, environ={}, device="cpu",
                          params_dtype=torch.float32).model.eval()
        with torch.no_grad():
            logits = model(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"])
    return logits.float()


def verify(cfg: VerifyConfig) -> VerifyResult:
    """The logits comparison, on a probe from the checkpoint's own tokenizer, or from config.json's
    token ids where it has none. ``passed`` false (exit 1) means the logits differ, nothing else."""
    from PIL import Image

    cfg.check()
    hf_dir = Path(cfg.hf)
    HFCheckpoint.open(hf_dir)  # both inputs are checked before either is loaded
    MegatronCheckpoint.open(cfg.ckpt, cfg.iteration)
    images = None
    if cfg.image:
        images = []
        for path in cfg.image:
            try:
                images.append(Image.open(path).convert("RGB"))
            except (OSError, ValueError) as err:
                raise CheckpointError(f"--image {path}: cannot read it ({err})") from None
    try:
        arch = read_arch(hf_dir)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    inputs = probe_for(hf_dir, arch, images, cfg.prompt)
    try:
        hf_model = arch.family.hf_model_class().from_pretrained(hf_dir, dtype=torch.float32).eval()
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
