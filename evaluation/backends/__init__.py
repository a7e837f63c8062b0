"""Model backends: what runs the prompts of an evaluation.

A backend is a class registered in :data:`BACKENDS` (``"name": "module:Class"``, imported only when
chosen) with this interface::

    class Backend(Protocol):
        name: str                       # the --backend value
        modes: tuple[str, ...]          # scoring modes it runs: "generate" and/or "teacher-forcing"
        primary: bool                   # this process writes the results (rank 0 of a parallel backend)

        @classmethod
        def from_options(cls, options: ModelOptions, rope: RopeSetting, builder: PromptBuilder,
                         output: str) -> Backend: ...
        def describe(self) -> dict:     # recorded under "backend" in results.json
        def run(self, requests: Sequence[Request], mode: str) -> Iterator[tuple[int, dict]]: ...
        def close(self) -> None: ...

``run`` yields ``(index into requests, fields)`` once per request, in any order, as each finishes:

- mode ``generate``: ``{"prediction": str}`` (plus anything worth recording, e.g.
  ``server_prompt_tokens``);
- mode ``teacher-forcing``: ``{"answer_logprob": float (sum of log p over the answer tokens and the
  closing <|im_end|>), "answer_tokens": int, "answer_token_accuracy": float (share of those tokens
  that are the argmax)}``, computed on ``micro_batch([r.pack_item() for r in batch], geometry)`` (labels and
  ``loss_mask`` exactly as in training);
- on a failure of one request: ``{"error": str}`` (the row is written and retried by a rerun).

Backends apply ``rope`` (:mod:`evaluation.rope`) themselves and build their inputs only from the
``Request`` (:mod:`evaluation.prompt`), so every backend sees the same prompt.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from typing import Protocol

from evaluation.config import EvalError

BACKENDS = {
    "hf": "evaluation.backends.hf:HFBackend",
    "openai": "evaluation.backends.openai:OpenAIBackend",
    "megatron": "evaluation.backends.megatron:MegatronBackend",
}


class Backend(Protocol):
    name: str
    modes: tuple[str, ...]
    primary: bool

    def describe(self) -> dict: ...

    def run(self, requests: Sequence, mode: str) -> Iterator[tuple[int, dict]]: ...

    def close(self) -> None: ...


def backend_class(name: str):
    if name not in BACKENDS:
        raise EvalError(f"--backend {name}: unknown; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_backend(options, rope, builder, output: str) -> Backend:
    cls = backend_class(options.backend)
    if options.scoring not in cls.modes:
        raise EvalError(f"--backend {options.backend} cannot --scoring {options.scoring} "
                        f"(it runs: {', '.join(cls.modes)})")
    return cls.from_options(options, rope, builder, output)
