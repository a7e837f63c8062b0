"""``--backend megatron``: the training model on a Megatron checkpoint, teacher-forced, at any TP/PP/CP.

The reference answer is scored, not generated: its log-likelihood (the sum of log p over the answer
tokens and the closing ``<|im_end|>``, exactly the tokens ``loss_mask`` marks in training) and the
share of those tokens that are the argmax. Each example is one micro-batch made by the training
collation (``micro_batch``); the model chunks and the forward-only pass are the trainer's own
(``megatron_vlm.model_builder.build_vlm``, ``training.step.run_schedule``), so this is what
``longvlm train`` logs as its validation. Start it like training: one process, or ``torchrun`` /
``srun`` with ``--tp/--pp/--cp``; examples are spread over the data-parallel ranks and rank 0
writes the results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from evaluation.config import EvalError
from evaluation.prompt import PromptBuilder, Request
from evaluation.rope import RopeSetting
from megatron_vlm.parallel import ParallelLayout


class MegatronBackend:
    name = "megatron"
    modes = ("teacher-forcing",)

    def __init__(self, checkpoint: str, layout: ParallelLayout, rope: RopeSetting, *, dtype: str = "auto",
                 attention_backend: str = "torch", transformer_impl: str = "local", batch_size: int = 8):
        from megatron.core import parallel_state as ps

        from megatron_vlm import runtime
        from megatron_vlm.formats.checkpoint import CheckpointError, MegatronCheckpoint
        from megatron_vlm.model_builder import build_vlm

        env = runtime.read_dist_env()
        self.primary = env.rank == 0
        try:
            ckpt = MegatronCheckpoint.open(checkpoint)
        except CheckpointError as err:
            raise EvalError(f"--checkpoint {checkpoint}: {err}") from None
        if dtype == "auto":
            dtype = "bfloat16" if runtime.use_cuda() else "float32"
        self.dtype = getattr(torch, dtype)
        self.chunks = build_vlm(layout=layout, checkpoint=ckpt, seed=1234, attention_backend=attention_backend,
                                transformer_impl=transformer_impl, params_dtype=self.dtype,
                                calculate_per_token_loss=True, **rope.megatron_kwargs()).chunks
        for chunk in self.chunks:
            chunk.eval()
        self.layout, self.checkpoint, self.batch_size = layout, str(ckpt.iter_dir), batch_size
        self.attention_backend, self.transformer_impl = attention_backend, transformer_impl
        self.dp, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        self.reporter = (ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0
                         and ps.get_context_parallel_rank() == 0)

    @classmethod
    def from_options(cls, options, rope: RopeSetting, builder: PromptBuilder, output: str) -> MegatronBackend:
        if not options.checkpoint:
            raise EvalError("--backend megatron needs --checkpoint: a Megatron checkpoint directory "
                            "(e.g. RUN_DIR/checkpoints or the output of 'longvlm convert hf-to-megatron')")
        return cls(options.checkpoint, options.layout, rope, dtype=options.dtype,
                   attention_backend=options.attention_backend, transformer_impl=options.transformer_impl,
                   batch_size=options.batch_size)

    def describe(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "dtype": str(self.dtype).removeprefix("torch."),
                "layout": {"tp": self.layout.tp, "pp": self.layout.pp, "cp": self.layout.cp, "dp": self.dp},
                "attention_backend": self.attention_backend, "transformer_impl": self.transformer_impl,
                "scoring": "teacher-forcing",
                "rope_applied_by": "megatron model config"}

    def run(self, requests: Sequence[Request], mode: str) -> Iterator[tuple[int, dict]]:
        """Rounds of ``batch_size`` examples per data-parallel rank (the last round padded with repeats so
        every rank runs the same passes); rank 0 yields every example's fields."""
        from megatron.core import parallel_state as ps

        from megatron_vlm.data.image_share import ImageShare
        from megatron_vlm.data.micro_batch import micro_batch
        from training.step import run_schedule

        per_round = self.batch_size * self.dp
        rounds = math.ceil(len(requests) / per_round)
        share = ImageShare(decode=ps.is_pipeline_first_stage(ignore_virtual=True))  # every page: the model splits CP
        for r in range(rounds):
            mine = [(r * per_round + self.dp_rank + k * self.dp) for k in range(self.batch_size)]
            mine = [i if i < len(requests) else None for i in mine]
            batches = []
            for i in mine:
                request = requests[i if i is not None else 0]
                try:
                    batches.append(micro_batch([request.pack_item()], request.builder.geometry,
                                               padding=self.layout.token_padding()))
                except (ValueError, KeyError) as err:
                    raise EvalError(f"example {request.id}: cannot build its micro-batch ({err})") from None
            longest = max(b["input_ids"].shape[1] for b in batches)
            with torch.no_grad():
                _, losses = run_schedule(self.chunks, iter(batches), len(batches), share, longest,
                                         forward_only=True, score=True)
            found = [(i, item["rows"][0].tolist()) for i, item in zip(mine, losses) if i is not None] \
                if self.reporter else []
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, found)
            if self.primary:
                for part in gathered:
                    for i, (logp_neg, tokens, right) in part:
                        yield i, {"answer_logprob": -logp_neg, "answer_tokens": int(tokens),
                                  "answer_token_accuracy": right / tokens if tokens else 0.0}

    def close(self) -> None:
        from megatron_vlm import runtime

        runtime.destroy()


def checkpoint_tokenizer(checkpoint: str) -> str | None:
    """The HF directory a Megatron checkpoint came from (its tokenizer), if it still exists."""
    from megatron_vlm.formats.checkpoint import MegatronCheckpoint

    try:
        hf_dir = MegatronCheckpoint.open(checkpoint).meta.get("source", {}).get("hf_dir")
    except Exception:
        return None
    return hf_dir if hf_dir and Path(hf_dir).is_dir() else None
