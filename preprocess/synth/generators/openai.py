"""The ``openai`` generator: a strong VLM behind any OpenAI-compatible chat-completions endpoint.

One request per QA pair: the versioned task prompt, then each page of the segment as a text label
``Page N:`` followed by the page image as a base64 data URL. The reply must be one JSON object.
"""

from __future__ import annotations

import base64
import json
import re

from preprocess.synth.generators.base import QARequest
from preprocess.synth.generators.chat_client import ChatClient, RequestFailed
from preprocess.synth.prompts import PROMPT_VERSION, prompt_version, render_prompt
from preprocess.synth.validate import Rejected

_MIME = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"RIFF", "image/webp"))
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def data_url(image: bytes, encoding: str = "png") -> str:
    mime = next((m for magic, m in _MIME if image.startswith(magic)), f"image/{encoding.lower()}")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def parse_reply(text: str) -> dict:
    """The reply's JSON object (a surrounding markdown fence is tolerated), else ``Rejected('malformed')``."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as err:
        raise Rejected("malformed", f"not JSON ({err.msg}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise Rejected("malformed", f"expected a JSON object: {text[:200]!r}")
    return value


class OpenAIGenerator:
    def __init__(self, client: ChatClient, model: str, temperature: float = 0.7, max_tokens: int = 1024,
                 version: str = PROMPT_VERSION):
        self.client, self.model = client, model
        self.temperature, self.max_tokens, self.version = temperature, max_tokens, version

    @classmethod
    def from_config(cls, config) -> OpenAIGenerator:
        return cls(ChatClient.from_options(config, config.output), config.model, config.temperature,
                   config.max_tokens)

    def stats(self) -> dict:
        """``requests`` (HTTP attempts), ``retries``, ``cache_hits``, ``failed``."""
        return dict(self.client.stats)

    def info(self, task: str) -> dict:
        return {"name": "openai", "model": self.model, "prompt_version": prompt_version(task, self.version)}

    def payload(self, pool, request: QARequest) -> dict:
        content = [{"type": "text", "text": render_prompt(request.task, request.segment, self.version)}]
        for page in request.segment.pages:
            image = pool.page_bytes(request.doc["doc_id"], page)
            content.append({"type": "text", "text": f"Page {page}:"})
            content.append({"type": "image_url", "image_url": {"url": data_url(image, pool.encoding)}})
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": request.seed % 2**31}

    def generate(self, pool, request: QARequest) -> dict:
        try:
            text = self.client.complete(self.payload(pool, request))
        except RequestFailed as err:
            raise Rejected("request_failed", str(err)) from None
        return parse_reply(text)
