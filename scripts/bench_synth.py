"""Benchmark ``longvlm synth``: offline throughput, and the openai generator's concurrency and cache.

The openai part runs against a chat-completions server on loopback that answers every request
after a fixed latency (like a busy VLM server), so the figures show the client side only: how
bounded concurrency hides latency, and that a rerun served from the cache sends no request.

    PYTHONPATH=. python scripts/bench_synth.py [--pool POOL_DIR] [--latency 0.2]

Without --pool, a pool is built from longvlm/demo_pdfs at 72 dpi into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.loopback_openai import LoopbackChatServer  # noqa: E402  (the test suite's loopback server)

from longvlm import api  # noqa: E402


def serve(latency: float) -> LoopbackChatServer:
    """A chat-completions server answering a valid anchored QA pair after ``latency`` seconds."""

    def respond(body: dict, headers: dict) -> str:
        time.sleep(latency)
        content = body["messages"][0]["content"]
        first = int(re.fullmatch(r"Page (\d+):", content[1]["text"])[1])
        task = re.search(r"Task: ([a-z-]+)", content[0]["text"])[1]
        pages = [first] if task == "extract-single" else [first, first + 1]
        return json.dumps({"question": f"On page {first}, what is the {task} fact #{body['seed']}?", "answer": "42",
                           "evidence": "page text", "evidence_pages": pages})

    return LoopbackChatServer(respond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", help="an existing pool directory (default: build one from longvlm/demo_pdfs)")
    parser.add_argument("--latency", type=float, default=0.2, help="server seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_synth."))
    pool_dir = args.pool
    if pool_dir is None:
        pool_dir = str(work / "pool")
        t0 = time.perf_counter()
        api.pool(inputs=["longvlm/demo_pdfs"], output=pool_dir, min_pages=0, max_pages=0, dpi=72, progress=False)
        print(f"pool built in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    result = api.synth(pool=pool_dir, output=str(work / "offline.jsonl"), per_doc=4, progress=False)
    dt = time.perf_counter() - t0
    n = result.accepted + result.rejected
    print(f"offline, all 5 tasks, --per-doc 4: {n} attempts ({result.accepted} accepted) in {dt:.2f} s "
          f"= {n / dt:.0f} instances/s")

    server = serve(args.latency)
    endpoint = server.endpoint
    options = dict(pool=pool_dir, generator="openai", model="bench", endpoint=endpoint, per_doc=2,
                   tasks="extract-single,extract-multi,reasoning", progress=False)
    for c in args.concurrency:
        out = work / f"openai_c{c}.jsonl"
        before, t0 = server.calls, time.perf_counter()
        result = api.synth(output=str(out), concurrency=c, **options)
        dt = time.perf_counter() - t0
        sent = server.calls - before
        print(f"openai, latency {args.latency} s, --concurrency {c:>2}: {sent} requests in {dt:.2f} s "
              f"= {sent / dt:.1f} requests/s ({result.accepted} accepted)")
        before, t0 = server.calls, time.perf_counter()
        api.synth(output=str(out), concurrency=c, **options)
        print(f"  rerun from the cache: {server.calls - before} requests, {time.perf_counter() - t0:.2f} s")
    server.close()
    sizes = [p.stat().st_size for p in (work / f"openai_c{args.concurrency[0]}.jsonl.cache").rglob("*.json")]
    print(f"cache: {len(sizes)} responses, {sum(sizes) / 1024:.0f} KiB; work dir {work}")


if __name__ == "__main__":
    main()
