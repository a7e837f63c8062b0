"""A minimal OpenAI-compatible chat-completions client (standard library only), and its options.

Retries 429, 5xx, timeouts and connection errors with exponential backoff (honouring
``Retry-After``); answers come from / go to a :class:`ResponseCache` first. The API key is only
ever put in the ``Authorization`` header, never in messages or logs. Thread-safe.

:class:`ChatClientOptions` declares the endpoint options once for every command that talks to a
server (``longvlm synth --generator openai``, ``longvlm eval --backend openai``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from megatron_vlm.utils.checks import MAX_WAIT_S, MAX_WORKERS, number_error
from preprocess.synth.generators.cache import ResponseCache, request_key

MAX_DELAY_S = 60.0


class RequestFailed(Exception):
    """The request failed for good (a non-retryable status, or retries exhausted)."""


def completions_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


_GROUP = "OpenAI-compatible endpoint"


@dataclass(kw_only=True)
class ChatClientOptions:
    """The options of an OpenAI-compatible chat-completions endpoint (a base of command configs)."""

    endpoint: str = field(default="http://localhost:8000/v1", metadata={"group": _GROUP, "help": (
        "openai: base URL of the chat-completions API (…/v1 or the full …/chat/completions URL)")})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"group": _GROUP, "help": (
        "openai: environment variable holding the API key (unset: no Authorization header, fine for a "
        "local vLLM); the key is sent in the header only and never written or logged")})
    concurrency: int = field(default=8, metadata={"group": _GROUP, "help": "requests in flight at once"})
    timeout: float = field(default=300.0, metadata={"group": _GROUP, "help": "openai: seconds per request"})
    max_retries: int = field(default=6, metadata={"group": _GROUP, "help": (
        "openai: retries on 429, 5xx, timeouts and connection errors")})
    retry_backoff: float = field(default=2.0, metadata={"group": _GROUP, "help": (
        "openai: first retry delay in seconds, doubled on each retry (capped at 60 s)")})
    cache_dir: str | None = field(default=None, metadata={"group": _GROUP, "help": (
        "openai: on-disk response cache (default: OUTPUT.cache); a rerun costs nothing for what was done")})

    def client_option_errors(self) -> list[str]:
        """What is wrong with these options (empty: nothing)."""
        problems = [number_error("--concurrency", self.concurrency, ge=1, le=MAX_WORKERS),
                    number_error("--max-retries", self.max_retries, ge=0, le=100),
                    number_error("--timeout", self.timeout, gt=0, le=MAX_WAIT_S),
                    number_error("--retry-backoff", self.retry_backoff, ge=0, le=MAX_WAIT_S)]
        return [p for p in problems if p]


class ChatClient:
    @classmethod
    def from_options(cls, options: ChatClientOptions, output: str) -> ChatClient:
        """A client for ``options``; the cache defaults to ``OUTPUT.cache``; the key is read from the environment."""
        return cls(options.endpoint, ResponseCache(options.cache_dir or f"{output}.cache"),
                   api_key=os.environ.get(options.api_key_env), timeout=options.timeout,
                   max_retries=options.max_retries, retry_backoff=options.retry_backoff)

    def __init__(self, endpoint: str, cache: ResponseCache, api_key: str | None = None, timeout: float = 300.0,
                 max_retries: int = 6, retry_backoff: float = 2.0, sleep=time.sleep):
        self.url = completions_url(endpoint)
        self.cache = cache
        self._api_key = api_key
        self.timeout, self.max_retries, self.retry_backoff = timeout, max_retries, retry_backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "failed": 0}

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def complete(self, payload: dict) -> str:
        """The assistant message text for ``payload`` (cached, else requested with retries)."""
        return self.respond(payload)["content"]

    def respond(self, payload: dict) -> dict:
        """``{"content", "model", "usage"}`` for ``payload`` (cached, else requested with retries);
        ``usage`` is the server's token counts (``prompt_tokens``, ...) where it reports them."""
        key = request_key(payload)
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cache_hits")
            return hit
        body = self._post(payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            self._count("failed")
            raise RequestFailed(f"response without choices[0].message.content ({err!r})") from None
        if not isinstance(content, str):
            content = json.dumps(content)
        record = {"content": content, "model": body.get("model"), "usage": body.get("usage")}
        self.cache.put(key, record)
        return record

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempt = 0
        while True:
            retry_after = None
            self._count("requests")
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    self._count("failed")
                    detail = err.read(300).decode("utf-8", "replace")
                    raise RequestFailed(f"HTTP {err.code} from {self.url}: {detail}") from None
                why = f"HTTP {err.code}"
                retry_after = err.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                why = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError:
                why = "response is not JSON"
            if attempt == self.max_retries:
                self._count("failed")
                raise RequestFailed(f"{why} after {attempt + 1} attempt(s) to {self.url}")
            self._count("retries")
            delay = min(MAX_DELAY_S, self.retry_backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
            if retry_after and retry_after.strip().isdigit():
                delay = max(delay, min(MAX_DELAY_S, float(retry_after)))
            self._sleep(delay)
            attempt += 1
