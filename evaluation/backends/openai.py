"""``--backend openai``: any OpenAI-compatible chat-completions server (vLLM serving the exported HF
checkpoint is the way to run 256K-512K on a cluster).

Requests go through synth's :class:`~preprocess.synth.generators.chat_client.ChatClient`:
``--concurrency`` in flight, retries with backoff on 429/5xx/timeouts, the on-disk response cache
(a rerun pays only for what never got an answer), the API key read from ``--api-key-env`` and sent
in the ``Authorization`` header only. Each prompt is the request's chat messages (the training
layout; the server's chat template renders the same text), its page images as PNG/JPEG data URLs
at exactly the pages' Qwen2.5-VL sizes, greedy (``temperature`` 0). The server's
``usage.prompt_tokens`` is recorded beside our own count, to catch a server that resizes images.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from evaluation.prompt import PromptBuilder, Request
from evaluation.rope import RopeSetting
from preprocess.synth.generators.chat_client import ChatClient, RequestFailed
from preprocess.synth.generators.openai import data_url


class OpenAIBackend:
    name = "openai"
    modes = ("generate",)
    primary = True

    def __init__(self, client: ChatClient, model: str, rope: RopeSetting, *, concurrency: int = 8,
                 max_new_tokens: int = 64):
        self.client, self.model, self.rope = client, model, rope
        self.concurrency, self.max_new_tokens = concurrency, max_new_tokens
        if rope.overridden:
            print(f"note: RoPE base {rope.base:g} ({rope.mode}) is recorded, but a server applies its own: "
                  f"{rope.server_hint()}", file=sys.stderr)

    @classmethod
    def from_options(cls, options, rope: RopeSetting, builder: PromptBuilder, output: str) -> OpenAIBackend:
        return cls(ChatClient.from_options(options, output), options.model or options.checkpoint, rope,
                   concurrency=options.concurrency, max_new_tokens=options.max_new_tokens)

    def describe(self) -> dict:
        return {"name": self.name, "endpoint": self.client.url, "model": self.model, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens, "rope_applied_by": "server", "requests": dict(self.client.stats)}

    def close(self) -> None:
        pass

    def payload(self, request: Request) -> dict:
        messages = request.messages(lambda page: data_url(page.encoded(), "png"))
        return {"model": self.model, "messages": messages, "temperature": 0.0, "top_p": 1.0,
                "max_tokens": self.max_new_tokens}

    def _ask(self, payload: dict) -> dict:
        try:
            record = self.client.respond(payload)
        except RequestFailed as err:
            return {"error": str(err)}
        out = {"prediction": record["content"]}
        usage = record.get("usage") or {}
        if isinstance(usage.get("prompt_tokens"), int):
            out["server_prompt_tokens"] = usage["prompt_tokens"]
        return out

    def run(self, requests: Sequence[Request], mode: str) -> Iterator[tuple[int, dict]]:
        # Payloads (page images encoded) are built here, one window ahead of the requests in flight,
        # so memory stays bounded and page rendering (not thread-safe in PyMuPDF) stays on one thread.
        pending = {}
        todo = iter(range(len(requests)))
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            while True:
                while len(pending) < 2 * self.concurrency and (i := next(todo, None)) is not None:
                    pending[pool.submit(self._ask, self.payload(requests[i]))] = i
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
