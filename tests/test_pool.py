"""The document pool stage: rejections, dedup, decontamination, stores, resume, shards, watchdog.

Independent references: megatron-core's own ``IndexedDataset`` reads the stores, transformers'
``Qwen2VLImageProcessorPil`` gives the token counts, Pillow decodes the pages, PyMuPDF renders
the reference rasters, ``hashlib`` gives the document ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from helpers.distributed import wait_for
from helpers.pools import pool_files

from longvlm import api
from megatron_vlm.formats.pool import Pool, PoolFormatError
from preprocess.pool.outputs import PoolError

REPO = Path(__file__).resolve().parents[1]
DPI = 36  # tests that do not look at pixels render small
FAST = {"dpi": DPI, "min_pages": 0, "max_pages": 0, "progress": False}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_pdf(path: Path, pages: list[tuple[float, float]]) -> Path:
    doc = pymupdf.open()
    for i, (w, h) in enumerate(pages):
        page = doc.new_page(width=w, height=h)
        page.insert_text((2, min(h - 2, 20)), f"page {i + 1}", fontsize=min(8, h / 2))
    doc.save(path)
    return path


def make_slow_pdf(path: Path, pages: int = 1, lines: int = 20000) -> Path:
    """Pages of random long strokes: 1-2 s each for MuPDF to rasterize, at any size."""
    rng = np.random.default_rng(0)
    doc = pymupdf.open()
    for _ in range(pages):
        page = doc.new_page(width=200, height=200)
        xy = rng.uniform(0, 200, (lines, 4))
        ops = "".join(f"{a:.1f} {b:.1f} m {c:.1f} {d:.1f} l\n" for a, b, c, d in xy)
        xref = doc.get_new_xref()
        doc.update_object(xref, "<<>>")
        doc.update_stream(xref, f"0.3 w\n{ops}S\n".encode())
        doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
    doc.save(path, deflate=True)
    return path


ZERO_PAGE_PDF = (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
                 b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
                 b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pdf_dir) -> dict:
    """A folder with two good PDFs, a duplicate, and one file for every rejection reason."""
    root = tmp_path_factory.mktemp("corpus")
    pdfs = root / "pdfs"
    (pdfs / "sub").mkdir(parents=True)
    shutil.copy(pdf_dir / "float.pdf", pdfs / "a_float.pdf")
    shutil.copy(pdf_dir / "booktabs.pdf", pdfs / "b_booktabs.pdf")
    shutil.copy(pdf_dir / "float.pdf", pdfs / "sub" / "z_float_copy.pdf")
    shutil.copy(pdf_dir / "camlidl-1.04.doc.pdf", pdfs / "c_contaminated.pdf")
    shutil.copy(pdf_dir / "seminar-doc.pdf", pdfs / "d_too_long.pdf")  # 45 pages > --max-pages 40
    (pdfs / "e_not_pdf.pdf").write_text("this is not a PDF\n")
    (pdfs / "f_corrupt.pdf").write_bytes(b"%PDF-1.4\n" + random.Random(1).randbytes(3000) + b"\n%%EOF\n")
    data = (pdf_dir / "lineno.pdf").read_bytes()
    (pdfs / "g_truncated.pdf").write_bytes(data[: len(data) // 2])
    enc = pymupdf.open(pdf_dir / "float.pdf")
    enc.save(pdfs / "h_encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")
    (pdfs / "i_zero_pages.pdf").write_bytes(ZERO_PAGE_PDF)
    (pdfs / "l_empty.pdf").write_bytes(b"")  # 0 bytes: an interrupted download or copy
    make_pdf(pdfs / "j_aspect.pdf", [(595, 842), (5000, 10)])  # 500:1
    make_pdf(pdfs / "k_huge.pdf", [(595, 842), (20000, 300)])  # > 14,400 pt
    readme = root / "README.md"
    readme.write_text("# not a pdf\n")
    listing = root / "more.txt"
    listing.write_text("# extra inputs\nmissing.pdf\n")
    exclude = root / "eval_hashes.txt"
    exclude.write_text(f"# evaluation PDFs\n{sha256(pdfs / 'c_contaminated.pdf')}  c_contaminated.pdf\n")
    return {"root": root, "pdfs": pdfs, "readme": readme, "listing": listing, "exclude": exclude}


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool") / "pool"
    api.pool(inputs=[str(corpus["pdfs"]), str(corpus["readme"]), str(corpus["listing"])], output=str(out),
             exclude_hashes=str(corpus["exclude"]), dpi=DPI, min_pages=0, max_pages=40, progress=False,
             workers=2)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_rejection_reason_and_the_good_documents(built, corpus):
    rejected = {Path(r["source"]).name: r for r in read_jsonl(built / "rejected.jsonl")}
    reasons = {name: r["reason"] for name, r in rejected.items()}
    assert reasons == {
        "z_float_copy.pdf": "duplicate",
        "c_contaminated.pdf": "contaminated",
        "d_too_long.pdf": "page_count",
        "e_not_pdf.pdf": "not_pdf",
        "f_corrupt.pdf": "corrupt",
        "g_truncated.pdf": "truncated",
        "h_encrypted.pdf": "encrypted",
        "i_zero_pages.pdf": "no_pages",
        "l_empty.pdf": "not_pdf",
        "j_aspect.pdf": "aspect_ratio",
        "k_huge.pdf": "page_size",
        "README.md": "not_pdf",
        "missing.pdf": "unreadable",
    }
    assert all(r["detail"] for r in rejected.values())
    assert rejected["z_float_copy.pdf"]["duplicate_of"].endswith("a_float.pdf")
    assert rejected["z_float_copy.pdf"]["doc_id"] == sha256(corpus["pdfs"] / "a_float.pdf")
    assert "2" in rejected["j_aspect.pdf"]["detail"]  # names the page
    assert rejected["l_empty.pdf"]["detail"] == "the file is empty (0 bytes)"
    manifest = read_jsonl(built / "manifest.jsonl")
    assert [Path(d["source"]).name for d in manifest] == ["a_float.pdf", "b_booktabs.pdf"]
    for doc in manifest:
        assert doc["doc_id"] == sha256(Path(doc["source"]))
    info = json.loads((built / "pool.json").read_text())
    assert info["counts"]["accepted"] == 2 and info["counts"]["rejected"] == 13
    assert not (built.parent / f".{built.name}.work").exists() and os.listdir(built.parent) == [built.name]


def test_stores_read_by_megatron_core_and_match_the_manifest(built):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from PIL import Image

    pool = Pool.open(built)
    pages = IndexedDataset(str(built / "pages"))
    layout = IndexedDataset(str(built / "layout"))
    sizes = [d["num_pages"] for d in pool.documents]
    assert len(pages) == len(layout) == sum(sizes) == 12 + 18
    assert pages.document_indices.tolist() == [0, 12, 30]
    assert pages.index.dtype == np.uint8
    for doc in pool.documents:
        for n, rec in enumerate(doc["pages"], 1):
            raw = pages[doc["page_start"] + n - 1]
            assert len(raw) == rec["bytes"]
            img = Image.open(__import__("io").BytesIO(raw.tobytes()))
            assert img.format.lower() == rec["format"]
            assert img.size == (rec["width"], rec["height"])
            assert rec["grid"] == [rec["height"] // 14, rec["width"] // 14]
            assert rec["tokens"] == rec["width"] * rec["height"] // 784
            blocks = json.loads(layout[doc["page_start"] + n - 1].tobytes())
            assert blocks == pool.page_blocks(doc["doc_id"], n)
        assert doc["total_image_tokens"] == sum(p["tokens"] for p in doc["pages"])
    doc = pool.documents[1]
    img = pool.page_image(doc["doc_id"], 3)
    assert img.mode == "RGB" and img.size == (doc["pages"][2]["width"], doc["pages"][2]["height"])
    assert any("booktabs" in b["text"].lower() for b in pool.page_blocks(doc["doc_id"], 1))


def test_token_counts_equal_the_qwen2vl_image_processor(built):
    """The page sizes equal what transformers' processor makes of a plain render at --dpi."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056)
    pool = Pool.open(built)
    for doc in pool.documents:
        pdf = pymupdf.open(doc["source"])
        for page, rec in zip(pdf, doc["pages"]):
            pix = page.get_pixmap(dpi=DPI)
            out = processor(images=[Image.new("RGB", (pix.width, pix.height))], return_tensors="np")
            t, h, w = out["image_grid_thw"][0].tolist()
            assert [h, w] == rec["grid"]
            assert t * h * w // 4 == rec["tokens"]


def test_pages_are_lossless_or_above_40db_against_a_pymupdf_render(built):
    from PIL import Image

    from preprocess.pool.encode import psnr

    pool = Pool.open(built)
    for doc in pool.documents:
        pdf = pymupdf.open(doc["source"])
        for n in (1, 2, doc["num_pages"]):
            rec = doc["pages"][n - 1]
            page = pdf[n - 1]
            pix = page.get_pixmap(matrix=pymupdf.Matrix(rec["width"] / page.rect.width,
                                                        rec["height"] / page.rect.height), alpha=False)
            ref = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)
            got = np.asarray(pool.page_image(doc["doc_id"], n))
            if rec["format"] == "png":
                np.testing.assert_array_equal(got, ref)
            else:
                assert psnr(got, ref) >= 40.0
            assert np.asarray(Image.open(__import__("io").BytesIO(pool.page_bytes(doc["doc_id"], n)))).size


def test_reader_errors_name_the_problem(built, tmp_path):
    pool = Pool.open(built)
    with pytest.raises(KeyError, match="deadbeef"):
        pool.get("deadbeef")
    with pytest.raises(IndexError, match="out of range"):
        pool.page_bytes(pool.documents[0]["doc_id"], 999)
    with pytest.raises(PoolFormatError, match="no pool.json"):
        Pool.open(tmp_path)


def test_rerun_is_a_no_op_and_other_options_are_refused(built, corpus):
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    summary = api.pool(inputs=[str(corpus["pdfs"]), str(corpus["readme"]), str(corpus["listing"])],
                       output=str(built), exclude_hashes=str(corpus["exclude"]), dpi=DPI, min_pages=0,
                       max_pages=40, progress=False)
    assert summary.already_complete and summary.accepted == 2
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before
    with pytest.raises(PoolError, match="--dpi 36 .there. vs 72"):
        api.pool(inputs=[str(corpus["pdfs"]), str(corpus["readme"]), str(corpus["listing"])],
                 output=str(built), exclude_hashes=str(corpus["exclude"]), dpi=72, min_pages=0,
                 max_pages=40, progress=False)


def test_page_filter_defaults_are_the_papers(real_pdfs, tmp_path):
    small = [p for p in real_pdfs if p.name in ("float.pdf", "microtype.pdf", "lineno.pdf")]
    summary = api.pool(inputs=[str(p) for p in small], output=str(tmp_path / "p"), dpi=DPI, progress=False)
    kept = [Path(d["source"]).name for d in Pool.open(tmp_path / "p").documents]
    assert kept == ["microtype.pdf"]  # 37 pages; float has 12, lineno 58
    details = {Path(r["source"]).name: r["detail"] for r in read_jsonl(tmp_path / "p" / "rejected.jsonl")}
    assert "12 pages" in details["float.pdf"] and "58 pages" in details["lineno.pdf"]
    assert summary.reasons == {"page_count": 2}


def test_cli_reports_bad_input_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "longvlm.cli", "pool", str(tmp_path / "nope"),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "nope: no such file or folder" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "hashes.txt"
    bad.write_text("xyz\n")
    result = subprocess.run([sys.executable, "-m", "longvlm.cli", "pool", str(tmp_path),
                             "-o", str(tmp_path / "out"), "--exclude-hashes", str(bad)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "hashes.txt:1: not a SHA-256" in result.stderr


def test_odd_outputs_and_options_are_one_clear_error(pdf_dir, tmp_path, capsys):
    from longvlm.cli import main

    pdf = str(pdf_dir / "float.pdf")
    (tmp_path / "afile").write_text("x")
    assert main(["pool", pdf, "-o", str(tmp_path / "afile"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"-o {tmp_path / 'afile'}: is a file, not a pool directory" in err and "Traceback" not in err
    for dpi in ("0", "-5"):  # one message for both
        assert main(["pool", pdf, "-o", str(tmp_path / "p"), f"--dpi={dpi}"]) == 2
        assert f"--dpi must be >= 1 and <= 1200, got {dpi}" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_pool_without_documents_warns_and_exits_1_unless_allowed(pdf_dir, tmp_path, capsys):
    from longvlm.cli import main

    args = ["pool", str(pdf_dir / "float.pdf"), "--min-pages", "100", "--max-pages", "0", "--dpi", str(DPI),
            "--no-progress"]
    assert main([*args, "-o", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "warning: no document was accepted (page_count 1;" in err and "rejected.jsonl" in err
    assert len(Pool.open(tmp_path / "p")) == 0  # written all the same
    assert main([*args, "-o", str(tmp_path / "q"), "--allow-empty"]) == 0


def test_shards_merged_equal_a_single_run(corpus, real_pdfs, tmp_path):
    inputs = [str(corpus["pdfs"] / n) for n in ("a_float.pdf", "b_booktabs.pdf", "e_not_pdf.pdf",
                                                 "sub/z_float_copy.pdf", "i_zero_pages.pdf")]
    inputs.append(str(corpus["pdfs"] / "a_float.pdf"))  # same path twice: one input
    single = tmp_path / "single"
    api.pool(inputs=inputs, output=str(single), **FAST)
    shards = []
    for i in range(3):  # the duplicate pair lands in different shards
        shards.append(str(tmp_path / f"shard{i}"))
        api.pool(inputs=inputs, output=shards[-1], shard=i, num_shards=3, chunk_docs=1, **FAST)
    assert len(read_jsonl(Path(shards[0]) / "manifest.jsonl")) == 1
    with pytest.raises(PoolError, match="missing \\[2\\]"):
        api.pool(inputs=shards[:2], output=str(tmp_path / "bad"), merge=True)
    merged = tmp_path / "merged"
    api.pool(inputs=shards, output=str(merged), merge=True)
    assert pool_files(merged) == pool_files(single)
    dup = [r for r in read_jsonl(merged / "rejected.jsonl") if r["reason"] == "duplicate"]
    assert len(dup) == 1 and dup[0]["duplicate_of"].endswith("a_float.pdf")


def _cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "longvlm.cli", "pool", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_identical_pool(pdf_dir, tmp_path):
    inputs = [str(pdf_dir / "float.pdf"), str(pdf_dir / "booktabs.pdf"),
              str(make_slow_pdf(tmp_path / "slow.pdf", pages=2)), str(pdf_dir / "camlidl-1.04.doc.pdf")]
    opts = ["--dpi", str(DPI), "--min-pages", "0", "--chunk-docs", "1", "--no-progress", "--keep-work"]
    out = tmp_path / "resumed"
    proc = _cli([*inputs, "-o", str(out), *opts])
    chunks = tmp_path / ".resumed.work" / "chunks"
    wait_for(lambda: chunks.is_dir() and len([p for p in chunks.iterdir() if p.name.startswith("chunk-")]) >= 2,
              "two finished chunks")
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, mid-way through slow.pdf
    proc.wait()
    assert not out.exists()  # the pool appears whole or not at all
    done = {p.name: p.stat().st_ino for p in chunks.iterdir() if p.name.startswith("chunk-")}
    rerun = _cli([*inputs, "-o", str(out), *opts])
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    for name, inode in done.items():  # finished chunks were kept, not redone
        assert (chunks / name).stat().st_ino == inode
    fresh = tmp_path / "fresh"
    api.pool(inputs=inputs, output=str(fresh), dpi=DPI, min_pages=0, progress=False)
    assert pool_files(out) == pool_files(fresh)
    assert len(Pool.open(out)) == 4


def test_render_timeout_loses_only_that_document(pdf_dir, tmp_path):
    inputs = [str(make_slow_pdf(tmp_path / "slow.pdf")), str(pdf_dir / "float.pdf")]
    summary = api.pool(inputs=inputs, output=str(tmp_path / "p"), page_timeout=0.3, **FAST)
    assert summary.accepted == 1 and summary.reasons == {"render_timeout": 1}
    (rej,) = read_jsonl(tmp_path / "p" / "rejected.jsonl")
    assert rej["source"].endswith("slow.pdf") and "page 1 took more than 0.3 s" in rej["detail"]


@pytest.mark.slow
def test_worker_crash_loses_only_that_document(pdf_dir, tmp_path):
    import psutil

    inputs = [str(pdf_dir / "float.pdf"), str(make_slow_pdf(tmp_path / "slow.pdf", pages=2)),
              str(pdf_dir / "booktabs.pdf")]
    out = tmp_path / "p"
    proc = _cli([*inputs, "-o", str(out), "--dpi", str(DPI), "--min-pages", "0", "--chunk-docs", "1",
                 "--no-progress", "--keep-work"])
    chunks = tmp_path / ".p.work" / "chunks"
    wait_for(lambda: chunks.is_dir() and any(p.name == "chunk-000000" for p in chunks.iterdir()),
              "the first chunk")
    time.sleep(0.5)  # the worker has moved on to slow.pdf (2-4 s of rendering)
    workers = [c for c in psutil.Process(proc.pid).children()
               if any("spawn_main" in part for part in c.cmdline())]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGSEGV)  # as if MuPDF had crashed on slow.pdf (4 s of pages)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    (rej,) = read_jsonl(out / "rejected.jsonl")
    assert rej["reason"] == "render_crash" and rej["source"].endswith("slow.pdf")
    assert [Path(d["source"]).name for d in Pool.open(out).documents] == ["float.pdf", "booktabs.pdf"]


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_the_run_resumes(pdf_dir, tmp_path):
    import psutil

    inputs = [str(pdf_dir / "float.pdf"), str(make_slow_pdf(tmp_path / "slow.pdf", pages=2))]
    args = [*inputs, "-o", str(tmp_path / "p"), "--dpi", str(DPI), "--min-pages", "0", "--chunk-docs", "1",
            "--no-progress", "--keep-work"]
    proc = _cli(args)
    chunks = tmp_path / ".p.work" / "chunks"
    wait_for(lambda: chunks.is_dir() and any(p.name == "chunk-000000" for p in chunks.iterdir()),
              "the first chunk")
    time.sleep(0.5)
    workers = [c for c in psutil.Process(proc.pid).children()
               if any("spawn_main" in part for part in c.cmdline())]
    proc.send_signal(signal.SIGTERM)  # as SLURM does on preemption: the parent only
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert workers and not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not (tmp_path / "p" / "pool.json").exists()
    rerun = _cli(args)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert len(Pool.open(tmp_path / "p")) == 2


def test_reader_is_safe_across_threads_and_pickles(built):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    expected = Pool.open(built)
    keys = [(d["doc_id"], p) for d in expected.documents for p in range(1, d["num_pages"] + 1)]
    fresh = Pool.open(built)  # stores not opened yet: every thread races to open them
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda k: (fresh.page_bytes(*k), fresh.page_blocks(*k)), keys * 3))
    assert got == [(expected.page_bytes(*k), expected.page_blocks(*k)) for k in keys * 3]
    assert len(fresh._stores) == 2
    clone = pickle.loads(pickle.dumps(fresh))
    assert clone.page_bytes(*keys[-1]) == expected.page_bytes(*keys[-1])
