"""``--backend openai`` against a real chat-completions server on loopback: the prompt it receives (text
and images, counted by the server itself), concurrency, retries, the response cache, failures retried
by a rerun, and the API key never written anywhere."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
from helpers.loopback_openai import LoopbackChatServer, chat_completion
from PIL import Image

from evaluation import niah
from evaluation.config import NiahConfig
from evaluation.prompt import PromptBuilder
from longvlm import api, cli

API_KEY = "sk-eval-secret-9876543210"
LATENCY = 0.2
NEEDLE = re.compile(r"The secret code of the (\w+) vault is (\d+)\.")


def _image(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class NeedleServer:
    """Answers the code when the needle is in the text (it cannot read images); counts the prompt's tokens
    itself (its chat template, each image as (h/28)*(w/28) tokens); misbehaves on request."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.attempts: dict[str, int] = {}
        self.flaky: dict[str, tuple[int, int]] = {}  # payload text -> (status, failures before success)
        self.refuse_first_line = False  # 400 for prompts that open with the needle line (depth 0, text)
        self.lock = threading.Lock()
        self.http = LoopbackChatServer(self.respond)

    def respond(self, body, headers):
        time.sleep(LATENCY)
        content = body["messages"][0]["content"]
        texts = "".join(c["text"] for c in content if c["type"] == "text")
        sizes = [_image(c["image_url"]["url"]).shape[:2] for c in content if c["type"] == "image_url"]
        with self.lock:
            n = self.attempts[texts] = self.attempts.get(texts, 0) + 1
        status, failures = self.flaky.get(texts, (0, 0))
        if n <= failures:
            return status, {"Retry-After": "0"}, {"error": {"message": "try again"}}
        if self.refuse_first_line and NEEDLE.match(content[0]["text"]):
            return 400, {}, {"error": {"message": "bad request"}}
        placeholder = [{"type": "image"} if c["type"] == "image_url" else c for c in content]
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": placeholder}], tokenize=False,
                                                  add_generation_prompt=True)
        count = len(self.tokenizer(text)["input_ids"]) - len(sizes) + sum((h // 28) * (w // 28) for h, w in sizes)
        found = NEEDLE.search(texts)
        answer = found[2] if found else "I cannot find it."
        return 200, {}, chat_completion(answer, body["model"], usage={"prompt_tokens": count, "completion_tokens": 3})


@pytest.fixture
def server(qwen_tokenizer):
    s = NeedleServer(qwen_tokenizer)
    yield s
    s.http.close()


def _options(server, small_pool, qwen_tokenizer_dir, out, **kw):
    return {"pool": str(small_pool), "backend": "openai", "model": "vlm-test", "tokenizer": str(qwen_tokenizer_dir),
            "endpoint": server.http.endpoint, "output": str(out), "lengths": ["600", "1000"], "depths": [0.0, 0.5, 1.0],
            "concurrency": 3, "retry_backoff": 0.01, "max_retries": 3, "timeout": 30, "api_key_env": "EVAL_TEST_KEY",
            "cache_dir": str(out.parent / "cache"), "progress": False, "samples": 1, **kw}


def test_niah_through_a_server(tmp_path, server, small_pool, qwen_tokenizer, qwen_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("EVAL_TEST_KEY", API_KEY)
    out = tmp_path / "run1"
    opts = _options(server, small_pool, qwen_tokenizer_dir, out)
    requests = {r.id: r for r in niah.requests(NiahConfig(**opts), PromptBuilder(qwen_tokenizer))}
    # two prompts fail first (429 once, 500 twice) and are retried
    flaky = [r for r in requests.values() if r.meta["mode"] == "text"][:2]
    for r, behaviour in zip(flaky, [(429, 1), (500, 2)]):
        texts = "".join(c["text"] for c in r.messages(lambda page: "")[0]["content"] if c["type"] == "text")
        server.flaky[texts] = behaviour

    result = api.evaluate("niah", **opts)
    assert result.failed == 0 and len(result.rows) == 12
    # text needles are read (score 1), image needles are not (the server cannot read pixels)
    assert result.summary["by_mode"] == {"image": 0.0, "text": 1.0}
    for row in result.rows:
        assert row["server_prompt_tokens"] == row["prompt_tokens"] == requests[row["id"]].num_tokens
    assert "server_prompt_tokens_differ" not in result.summary
    # concurrency: up to 3 requests at once, never more
    assert server.http.max_in_flight == 3
    backend = json.loads((out / "results.json").read_text())["backend"]
    assert backend["requests"] == {"requests": 15, "retries": 3, "cache_hits": 0, "failed": 0}
    assert server.http.calls == 15 and server.http.auth == {f"Bearer {API_KEY}"}

    # the images sent are the context's pages, pixel for pixel (a drawn needle included)
    sent = [[_image(c["image_url"]["url"]) for c in p["messages"][0]["content"] if c["type"] == "image_url"]
            for p in server.http.payloads]
    for r in (r for r in requests.values() if r.meta["mode"] == "image"):
        pages = [page.pixels() for page in r.pages]
        assert any(len(images) == len(pages) and all(np.array_equal(a, b) for a, b in zip(images, pages))
                   for images in sent), r.id
    first = server.http.payloads[0]["messages"][0]["content"]
    assert [c["text"] for c in first if c["type"] == "text"][:2] == ["Page 1:", "\n"]
    assert all(p["temperature"] == 0.0 and p["max_tokens"] == 64 and p["model"] == "vlm-test"
               for p in server.http.payloads)

    # the key is in no file: results, config, cache
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("cache" in str(p) for p in files)
    for path in files:
        assert API_KEY.encode() not in path.read_bytes(), path

    # a rerun in the same directory asks nothing; one in a new directory is served from the cache
    calls = server.http.calls
    assert cli.main(["eval", "niah", "--pool", opts["pool"], "--backend", "openai", "--model", "vlm-test",
                     "--tokenizer", opts["tokenizer"], "--endpoint", opts["endpoint"], "-o", str(out),
                     "--lengths", "600", "1000", "--depths", "0", "0.5", "1", "--cache-dir", opts["cache_dir"],
                     "--samples", "1", "--no-progress"]) == 0
    assert server.http.calls == calls
    again = api.evaluate("niah", **{**opts, "output": str(tmp_path / "run2")})
    assert server.http.calls == calls
    assert [r["prediction"] for r in again.rows] == [r["prediction"] for r in result.rows]
    assert json.loads((tmp_path / "run2" / "results.json").read_text())["backend"]["requests"]["cache_hits"] == 12


def test_failed_requests_are_recorded_and_retried_by_a_rerun(tmp_path, server, small_pool, qwen_tokenizer_dir,
                                                             capsys):
    server.refuse_first_line = True
    out = tmp_path / "run"
    opts = _options(server, small_pool, qwen_tokenizer_dir, out, needle_modes=["text"], depths=[0.0, 1.0])
    result = api.evaluate("niah", **opts)
    assert result.failed == 2 and result.summary["failed"] == 2 and result.summary["n"] == 2
    errors = [r for r in result.rows if "error" in r]
    assert {r["depth"] for r in errors} == {0.0} and all("HTTP 400" in r["error"] for r in errors)
    assert server.http.calls == 4  # a 400 is not retried
    server.refuse_first_line = False
    argv = ["eval", "niah", "--pool", opts["pool"], "--backend", "openai", "--model", "vlm-test", "--tokenizer",
            opts["tokenizer"], "--endpoint", opts["endpoint"], "-o", str(out), "--lengths", "600", "1000",
            "--depths", "0", "1", "--needle-modes", "text", "--cache-dir", opts["cache_dir"], "--samples", "1",
            "--no-progress", "--rope-base", "4e6"]
    assert cli.main(argv) == 2  # another RoPE base is another run: refused
    assert "holds results of another run (config.rope_base: None -> 4000000.0" in capsys.readouterr().err
    assert cli.main(argv[:-2]) == 0
    assert server.http.calls == 6  # only the two failed examples again
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    latest = {r["id"]: r for r in rows}
    assert len(latest) == 4 and all("error" not in r and r["score"] == 1.0 for r in latest.values())
