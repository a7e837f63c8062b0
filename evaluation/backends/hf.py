"""``--backend hf``: the checkpoint's family's transformers model in this process, greedy decoding, batched by length.

Inputs come from the :class:`~evaluation.prompt.Request` as the training loader would make them:
the expanded token ids, pixel values by the family geometry's ``image_to_patches`` (the loader's
patching, not transformers' processor) and ``mm_token_type_ids`` (without them
transformers silently falls back to 1-D positions). Prompts are sorted by length and cut into
batches of at most ``--batch-size`` rows and ``--max-batch-tokens`` padded tokens; generation
left-pads, teacher forcing right-pads the loader's own micro-batch (``micro_batch``) and
projects only the answer positions onto the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from evaluation.config import EvalError
from evaluation.prompt import PromptBuilder, Request
from evaluation.rope import RopeSetting
from megatron_vlm.formats.dataset import PAD_ID
from preprocess.dataset.render_sample import IMAGE_PAD_ID


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first: at most ``batch_size`` rows and
    ``rows x longest <= max_batch_tokens`` (a prompt longer than that alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class HFBackend:
    name = "hf"
    modes = ("generate", "teacher-forcing")
    primary = True

    def __init__(self, checkpoint: str, rope: RopeSetting, builder: PromptBuilder, *, dtype: str = "auto",
                 device: str | None = None, attn_implementation: str = "sdpa", batch_size: int = 8,
                 max_batch_tokens: int = 65536, max_new_tokens: int = 64):
        import torch
        from transformers import AutoConfig

        from megatron_vlm.models.registry import family_of
        from megatron_vlm.runtime import use_cuda

        self.device = torch.device(device or ("cuda" if use_cuda() else "cpu"))
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        try:
            config = AutoConfig.from_pretrained(checkpoint)
            rope.apply_to_hf_config(config)
            family = family_of(checkpoint)
            self.im_end = family.tokens.im_end
            self.model = family.hf_model_class().from_pretrained(
                checkpoint, config=config, dtype=self.dtype, attn_implementation=attn_implementation)
        except (OSError, ValueError) as err:
            raise EvalError(f"--checkpoint {checkpoint}: transformers cannot load it ({err})") from None
        self.model.to(self.device).eval()
        self.checkpoint, self.rope, self.builder = checkpoint, rope, builder
        self.tokenizer = builder.tokenizer
        self.batch_size, self.max_batch_tokens, self.max_new_tokens = batch_size, max_batch_tokens, max_new_tokens
        self.attn_implementation = attn_implementation

    @classmethod
    def from_options(cls, options, rope: RopeSetting, builder: PromptBuilder, output: str) -> HFBackend:
        return cls(options.checkpoint, rope, builder, dtype=options.dtype, device=options.device,
                   attn_implementation=options.attn_implementation, batch_size=options.batch_size,
                   max_batch_tokens=options.max_batch_tokens, max_new_tokens=options.max_new_tokens)

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "attn_implementation": self.attn_implementation,
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens, "rope_applied_by": "hf config"}

    def close(self) -> None:
        del self.model

    # -- inputs ------------------------------------------------------------------------------------

    def _vision(self, requests: Sequence[Request]) -> dict:
        import torch

        pages = [p for r in requests for p in r.pages]
        if not pages:
            return {}
        grids = torch.tensor([p.geometry.grid_thw(p.height, p.width) for p in pages])
        pixels = np.concatenate([p.geometry.image_to_patches(p.pixels())[0] for p in pages])
        return {"pixel_values": torch.from_numpy(pixels).to(self.device, self.dtype),
                "image_grid_thw": grids.to(self.device)}

    def _generate(self, requests: Sequence[Request]) -> list[dict]:
        import torch
        from transformers import GenerationConfig

        rows = [r.expanded_ids() for r in requests]
        width = max(len(x) for x in rows)
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, x in enumerate(rows):  # left padding: every row ends where generation starts
            ids[i, width - len(x):] = x
            mask[i, width - len(x):] = 1
        input_ids = torch.from_numpy(ids).to(self.device)
        config = GenerationConfig(do_sample=False, max_new_tokens=self.max_new_tokens, num_beams=1,
                                  eos_token_id=[self.im_end, PAD_ID], pad_token_id=PAD_ID, repetition_penalty=1.0)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.from_numpy(mask).to(self.device),
                                      mm_token_type_ids=(input_ids == IMAGE_PAD_ID).int(),
                                      generation_config=config, **self._vision(requests))
        results = []
        for new in out[:, width:].tolist():
            stop = next((k for k, t in enumerate(new) if t in (self.im_end, PAD_ID)), len(new))
            results.append({"prediction": self.tokenizer.decode(new[:stop], skip_special_tokens=True),
                            "generated_tokens": stop})
        return results

    def _teacher_force(self, requests: Sequence[Request]) -> list[dict]:
        import torch

        from megatron_vlm.data.micro_batch import micro_batch

        # one training micro-batch (a THD stream) per example, right-padded into the rows transformers takes
        parts = [micro_batch([r.pack_item()], self.builder.geometry) for r in requests]
        lengths = torch.tensor([p["input_ids"].shape[1] for p in parts])
        width = int(lengths.max())

        def rows(key, fill):
            return torch.cat([torch.nn.functional.pad(p[key], (0, width - p[key].shape[1]), value=fill) for p in parts])

        batch = {"input_ids": rows("input_ids", PAD_ID), "labels": rows("labels", PAD_ID),
                 "loss_mask": rows("loss_mask", 0.0), "image_grid_thw": torch.cat([p["image_grid_thw"] for p in parts])}
        if all("pixel_values" in p for p in parts):
            batch["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
        input_ids = batch["input_ids"].to(self.device)
        attention = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long().to(self.device)
        keep = batch["loss_mask"].bool()
        vision = {}
        if "pixel_values" in batch:
            vision = {"pixel_values": batch["pixel_values"].to(self.device, self.dtype),
                      "image_grid_thw": batch["image_grid_thw"].to(self.device)}
        with torch.no_grad():  # the output layer on the answer tokens only (any transformers 5.x)
            hidden = self.model.model(input_ids=input_ids, attention_mask=attention,
                                      mm_token_type_ids=(input_ids == IMAGE_PAD_ID).int(), **vision).last_hidden_state
            logits = self.model.lm_head(hidden[keep.to(self.device)]).float()  # [answer tokens, vocab], row-major
        labels = batch["labels"][keep].to(self.device)
        logp = torch.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0].cpu()
        hit = (logits.argmax(-1) == labels).cpu()
        rows = torch.arange(keep.shape[0])[:, None].expand_as(keep)[keep]
        results = []
        for r in range(len(requests)):
            sel = rows == r
            n = int(sel.sum())
            results.append({"answer_logprob": float(logp[sel].sum()), "answer_tokens": n,
                            "answer_token_accuracy": float(hit[sel].float().mean()) if n else 0.0})
        return results

    def run(self, requests: Sequence[Request], mode: str) -> Iterator[tuple[int, dict]]:
        step = self._generate if mode == "generate" else self._teacher_force
        for batch in length_batches([r.num_tokens for r in requests], self.batch_size, self.max_batch_tokens):
            yield from zip(batch, step([requests[i] for i in batch]))
