"""Process one chunk of documents (in a worker) into a chunk folder of the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from preprocess.pool.config import PoolConfig
from preprocess.pool.document import Rejected, process_document
from preprocess.pool.store import write_chunk


def rejection(item: dict, reason: str, detail: str, **extra) -> dict:
    """A rejected.jsonl record for a planned input."""
    record = {"input_index": item["input_index"], "source": item["source"], "reason": reason, "detail": detail}
    if item.get("doc_id"):
        record["doc_id"] = item["doc_id"]
    record.update(extra)
    return record


def process_chunk(path: Path, items: list[dict], config: PoolConfig, skips: dict[int, dict],
                  notify: Callable[[str, int, int], None]) -> int:
    """Process ``items`` (input_index, source, doc_id) into the chunk folder ``path``; returns pages.

    ``skips`` maps input indices to a known rejection (a previous render timeout or crash).
    ``notify(kind, input_index, page)`` is called at each document ("doc") and page ("page").
    """
    if path.exists():  # finished meanwhile by a worker of an earlier, killed run
        return 0
    results, pages, layouts = [], [], []
    num_pages = 0
    for item in items:
        index = item["input_index"]
        notify("doc", index, 0)
        if index in skips:
            results.append({"rejected": rejection(item, skips[index]["reason"], skips[index]["detail"])})
            continue
        try:
            doc = process_document(item["source"], item["doc_id"], config,
                                   beat=lambda page, index=index: notify("page", index, page))
        except Rejected as err:
            results.append({"rejected": rejection(item, err.reason, err.detail)})
            continue
        except (OSError, MemoryError):  # the pipe to the parent, the disk, memory: not the document's fault
            raise
        except Exception as err:  # a bug or an unexpected library error: never stop the run
            results.append({"rejected": rejection(item, "error", f"{type(err).__name__}: {err}")})
            continue
        entry = {"input_index": index, **doc.entry}
        results.append({"entry": entry, "page_lengths": [len(p) for p in doc.pages],
                        "layout_lengths": [len(b) for b in doc.layouts]})
        pages.append(doc.pages)
        layouts.append(doc.layouts)
        num_pages += len(doc.pages)
    write_chunk(path, results, pages, layouts)
    return num_pages
