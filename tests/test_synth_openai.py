"""The openai generator against a real chat-completions server on loopback (http.server in a thread)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter

import pytest
from helpers.loopback_openai import LoopbackChatServer, chat_completion
from helpers.synth_inputs import FakePool

from preprocess.synth import SynthConfig, run_synth
from preprocess.synth.run import plan_size

API_KEY = "sk-test-secret-0123456789"
BEHAVIOURS = ["good", "fenced", "malformed", "noanchor", "empty", "outside", "flaky429", "flaky500", "slow"]
CLIENT_TIMEOUT = 2.0  # generous: a loaded CI machine must not turn good answers into timeouts


class ChatServer:
    """Speaks POST /v1/chat/completions; each document's first page image says how to behave."""

    def __init__(self, pool: FakePool, behaviours: list[str]):
        self.doc_of_image = {}
        for doc, behaviour in zip(pool.documents, behaviours):
            for p in range(1, doc["num_pages"] + 1):
                self.doc_of_image[base64.b64encode(pool.page_bytes(doc["doc_id"], p)).decode()] = behaviour
        self.calls: Counter = Counter()  # (behaviour, task) -> requests received
        self.lock = threading.Lock()
        self.loopback = LoopbackChatServer(self.respond)
        self.endpoint = self.loopback.endpoint

    @property
    def auth(self) -> set[str]:
        return self.loopback.auth

    @property
    def payloads(self) -> list[dict]:
        return self.loopback.payloads

    def close(self):
        self.loopback.close()

    def respond(self, body, headers):
        content = body["messages"][0]["content"]
        prompt = content[0]["text"]
        labels = [int(m[1]) for c in content[1:] if c["type"] == "text" for m in [re.fullmatch(r"Page (\d+):", c["text"])]]
        urls = [c["image_url"]["url"] for c in content[1:] if c["type"] == "image_url"]
        behaviour = self.doc_of_image[urls[0].split(",", 1)[1]]
        task = re.search(r"Task: ([a-z-]+)", prompt)[1]
        with self.lock:
            self.calls[behaviour, task] += 1
            n = self.calls[behaviour, task]
        if behaviour == "flaky429" and n == 1:
            return 429, {"Retry-After": "0"}, {"error": {"message": "rate limited"}}
        if behaviour == "flaky500" and n <= 2:
            return 500, {}, {"error": {"message": "overloaded"}}
        if behaviour == "down":
            return 503, {}, {"error": {"message": "down"}}
        if behaviour == "slow" and n == 1:
            time.sleep(3 * CLIENT_TIMEOUT)
        first = labels[0]
        pages = [first] if task == "extract-single" else [first, first + 1]
        qa = {"question": f"On page {first}, what does the table report for the North region ({task})?",
              "answer": "220 tonnes", "evidence": "the table", "evidence_pages": pages}
        if behaviour == "noanchor":
            qa["question"] = f"What does the table report for the North region ({task})?"
        if behaviour == "empty":
            qa["answer"] = ""
        if behaviour == "outside":
            qa["evidence_pages"] = [p + 40 for p in pages]
        text = json.dumps(qa)
        if behaviour == "fenced":
            text = f"```json\n{text}\n```"
        if behaviour == "malformed":
            text = "Sure! Here is the pair: {question: 'On page 3 ...', answer: 220}"
        return 200, {}, chat_completion(text, body["model"], usage={"total_tokens": 10})


@pytest.fixture
def server_pool():
    pool = FakePool(len(BEHAVIOURS), num_pages=30)
    server = ChatServer(pool, BEHAVIOURS)
    yield server, pool
    server.close()


def _run(tmp_path, server, pool, **options):
    options = {"max_retries": 3, **options}
    config = SynthConfig(pool="fake", output=str(tmp_path / "tasks.jsonl"), generator="openai", model="vlm-test",
                         endpoint=server.endpoint, tasks="extract-single,extract-multi", concurrency=4,
                         timeout=CLIENT_TIMEOUT, retry_backoff=0.01, api_key_env="SYNTH_TEST_KEY",
                         cache_dir=str(tmp_path / "cache"), progress=False, **options)
    return config, run_synth(config, pool=pool)


def test_openai_generator_accepts_good_rejects_bad_retries_and_caches(tmp_path, server_pool, monkeypatch):
    server, pool = server_pool
    monkeypatch.setenv("SYNTH_TEST_KEY", API_KEY)
    config, result = _run(tmp_path, server, pool)
    summary = result.summary
    tasks = ("extract-single", "extract-multi")
    # good answers (also fenced, and after 429 / 500 / a timeout) are accepted, bad ones rejected with the reason
    for task in tasks:
        assert summary[task]["accepted"] == 5
        assert summary[task]["reasons"] == {"malformed": 1, "no_anchor": 1, "empty_answer": 1,
                                            "evidence_outside_segment": 1}
    assert result.accepted + result.rejected == plan_size(len(pool.documents), config)  # nothing lost
    records = [json.loads(line) for line in result.output.read_text().splitlines()]
    rejected = [json.loads(line) for line in result.rejected_path.read_text().splitlines()]
    by_doc = {d["doc_id"]: b for d, b in zip(pool.documents, BEHAVIOURS)}
    assert {by_doc[r["doc_id"]] for r in records} == {"good", "fenced", "flaky429", "flaky500", "slow"}
    assert {(by_doc[r["doc_id"]], r["reason"]) for r in rejected} == {
        ("malformed", "malformed"), ("noanchor", "no_anchor"), ("empty", "empty_answer"),
        ("outside", "evidence_outside_segment")}
    for r in records:
        assert r["generator"] == {"name": "openai", "model": "vlm-test", "prompt_version": f"{r['task']}.v1"}
        assert r["answer"] == "220 tonnes" and r["evidence"] == "the table"
    # retries happened: 429 once, 500 twice, one timeout, per task
    assert server.calls["flaky429", "extract-single"] == 2 and server.calls["flaky500", "extract-multi"] == 3
    assert server.calls["slow", "extract-single"] == 2 and server.calls["good", "extract-single"] == 1
    assert result.generator_stats["retries"] == 2 * (1 + 2 + 1)
    # the request: key in the header only, page labels, and the segment's page images as data URLs
    assert server.auth == {f"Bearer {API_KEY}"}
    payload = server.payloads[0]
    content = payload["messages"][0]["content"]
    labels = [int(c["text"].split()[1].rstrip(":")) for c in content[1:] if c["type"] == "text"]
    images = [c["image_url"]["url"] for c in content[1:] if c["type"] == "image_url"]
    assert len(labels) == len(images) >= 8 and labels == list(range(labels[0], labels[0] + len(labels)))
    prompt = content[0]["text"]
    assert f"pages {labels[0]}-{labels[-1]}" in prompt and '"evidence_pages"' in prompt
    assert payload["model"] == "vlm-test" and payload["temperature"] == 0.7
    assert all(url.startswith("data:image/png;base64,") for url in images)
    for path in [result.output, result.rejected_path, result.summary_path, *(tmp_path / "cache").rglob("*.json")]:
        assert API_KEY not in path.read_text()
    # a rerun costs nothing: every answer comes from the cache, and the output is the same
    calls, first_output = sum(server.calls.values()), result.output.read_bytes()
    _, again = _run(tmp_path, server, pool)
    assert sum(server.calls.values()) == calls
    assert again.generator_stats["cache_hits"] == plan_size(len(pool.documents), config)
    assert again.output.read_bytes() == first_output


def test_openai_request_that_keeps_failing_is_rejected_and_not_cached(tmp_path, monkeypatch):
    pool = FakePool(2, num_pages=12)
    server = ChatServer(pool, ["down", "good"])
    try:
        _, result = _run(tmp_path, server, pool, max_retries=2)
        assert result.summary["extract-single"] == {"accepted": 1, "rejected": 1, "reasons": {"request_failed": 1}}
        assert server.calls["down", "extract-single"] == 3  # 1 + 2 retries
        (line,) = [json.loads(x) for x in result.rejected_path.read_text().splitlines() if "extract-single" in x]
        assert "HTTP 503 after 3 attempt(s)" in line["detail"]
        _run(tmp_path, server, pool, max_retries=2)
        assert server.calls["down", "extract-single"] == 6 and server.calls["good", "extract-single"] == 1
    finally:
        server.close()
