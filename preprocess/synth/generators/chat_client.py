"""A minimal OpenAI-compatible chat-completions client (standard library only).

Retries 429, 5xx, timeouts and connection errors with exponential backoff (honouring
``Retry-After``); answers come from / go to a :class:`ResponseCache` first. The API key is only
ever put in the ``Authorization`` header, never in messages or logs. Thread-safe.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request

from preprocess.synth.generators.cache import ResponseCache, request_key

MAX_DELAY_S = 60.0


class RequestFailed(Exception):
    """The request failed for good (a non-retryable status, or retries exhausted)."""


def completions_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


class ChatClient:
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
        key = request_key(payload)
        hit = self.cache.get(key)
        if hit is not None:
            self._count("cache_hits")
            return hit["content"]
        body = self._post(payload)
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            self._count("failed")
            raise RequestFailed(f"response without choices[0].message.content ({err!r})") from None
        if not isinstance(content, str):
            content = json.dumps(content)
        self.cache.put(key, {"content": content, "model": body.get("model"), "usage": body.get("usage")})
        return content

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
