"""Benchmark the document pool: page encodings (size, speed, quality) and the end-to-end stage.

    OMP_NUM_THREADS=1 python scripts/bench_pool.py                # all of it (~10 min on 2 cores)
    OMP_NUM_THREADS=1 python scripts/bench_pool.py --skip-e2e     # encodings only

Encodings are measured on every --sample-every-th page of the PDFs in --pdfs, rendered at --dpi to
the Qwen2.5-VL size, on one core: bytes/page, encode and decode pages/s (decode = Pillow to an RGB
image, what the training loader does), and PSNR against the render (inf = lossless). End to end
runs ``longvlm pool`` on all pages with --workers 1 and 2 and reports pages/s of wall time and
per CPU-second of the worker processes (the per-core figure, robust to other load on the machine).
"""

from __future__ import annotations

import argparse
import io
import math
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.pool import encode  # noqa: E402
from preprocess.pool.encode import encode_page, is_gray, jpeg_bytes, png_bytes, psnr  # noqa: E402
from preprocess.pool.render import page_geometry, render_page  # noqa: E402


def _pil(rgb: np.ndarray, gray: bool, **kwargs) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb[..., 0]) if gray else rgb)
    img.save(buf, **kwargs)
    return buf.getvalue()


def _stdlib_png(pixels: np.ndarray) -> bytes:
    """Our PNG writer with the standard library's zlib instead of ISA-L."""
    saved, encode._deflate = encode._deflate, zlib
    try:
        return png_bytes(pixels)
    finally:
        encode._deflate = saved


def _gray_when_gray(rgb: np.ndarray, gray: bool) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., 0]) if gray else rgb


FORMATS = {
    "png, Pillow level 6 (RGB)": lambda rgb, g: _pil(rgb, False, format="PNG", compress_level=6),
    "png, Pillow level 1 (RGB)": lambda rgb, g: _pil(rgb, False, format="PNG", compress_level=1),
    "png, Pillow level 1 (gray when gray)": lambda rgb, g: _pil(rgb, g, format="PNG", compress_level=1),
    "png, filter 0 + zlib 1 (gray when gray)": lambda rgb, g: _stdlib_png(_gray_when_gray(rgb, g)),
    "`--encoding png`: filter 0 + ISA-L 1 (gray when gray)": lambda rgb, g: encode_page(rgb, "png", 92)[0],
    "jpeg q90 4:2:0": lambda rgb, g: _pil(rgb, False, format="JPEG", quality=90),
    "jpeg q90 4:4:4": lambda rgb, g: jpeg_bytes(rgb, 90),
    "`--encoding jpeg`: q92 4:4:4": lambda rgb, g: jpeg_bytes(rgb, 92),
    "jpeg q95 4:4:4": lambda rgb, g: jpeg_bytes(rgb, 95),
    "webp lossless (method 0)": lambda rgb, g: _pil(rgb, False, format="WEBP", lossless=True, method=0),
    "webp q90 (method 0)": lambda rgb, g: _pil(rgb, False, format="WEBP", quality=90, method=0),
    "`--encoding auto` (default)": lambda rgb, g: encode_page(rgb, "auto", 92, 40.0)[0],
}


def sample_pages(pdf_dir: Path, dpi: int, every: int) -> tuple[list[np.ndarray], float]:
    """Rendered RGB pages (at the default family's geometry) and the render rate (pages/s, CPU time)."""
    from megatron_vlm.models.registry import DEFAULT_FAMILY, get_family

    geometry = get_family(DEFAULT_FAMILY).geometry
    pages, cpu = [], 0.0
    for path in sorted(pdf_dir.glob("*.pdf")):
        doc = pymupdf.open(path)
        for i in range(0, doc.page_count, every):
            page = doc[i]
            geo = page_geometry(page.rect, dpi, geometry, geometry.min_pixels, geometry.max_pixels, i + 1)
            t = time.process_time()
            raster = render_page(page, geo)
            cpu += time.process_time() - t
            pages.append(raster.rgb.copy())
    return pages, len(pages) / cpu


def bench_formats(pages: list[np.ndarray]) -> None:
    grays = [is_gray(p) for p in pages]
    print(f"\n{len(pages)} pages ({sum(grays)} gray), one core (CPU time)\n")
    print("| encoding | KB/page | encode pages/s | decode pages/s | PSNR min / mean (dB) |")
    print("|---|---|---|---|---|")
    for name, encoder in FORMATS.items():
        t = time.process_time()
        blobs = [encoder(p, g) for p, g in zip(pages, grays)]
        t_enc = time.process_time() - t
        t = time.process_time()
        decoded = []
        for b in blobs:
            img = Image.open(io.BytesIO(b))
            img.load()
            decoded.append(img if img.mode == "RGB" else img.convert("RGB"))
        t_dec = time.process_time() - t
        scores = [psnr(np.asarray(d), p) for d, p in zip(decoded, pages)]
        finite = [s for s in scores if math.isfinite(s)]
        quality = "lossless" if not finite else (
            f"{min(scores):.1f} / {np.mean(finite):.1f}" + (" (some lossless)" if len(finite) < len(scores) else ""))
        print(f"| {name} | {np.mean([len(b) for b in blobs]) / 1024:.0f} | {len(pages) / t_enc:.0f} "
              f"| {len(pages) / t_dec:.0f} | {quality} |")


def bench_end_to_end(pdf_dir: Path, dpi: int, workers: int) -> None:
    from preprocess.pool.build import build_pool
    from preprocess.pool.config import PoolConfig

    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        summary = build_pool(PoolConfig(inputs=[str(pdf_dir)], output=f"{tmp}/pool", dpi=dpi, min_pages=0,
                                        max_pages=0, workers=workers, progress=False))
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        size = sum(f.stat().st_size for f in Path(f"{tmp}/pool").glob("pages.bin"))
    print(f"| {workers} | {summary.pages} | {summary.accepted} | {wall:.1f} | {summary.pages / wall:.1f} "
          f"| {summary.pages / cpu:.1f} | {size / summary.pages / 1024:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdfs", type=Path, default=REPO / "tests" / "data" / "pdfs")
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--sample-every", type=int, default=4, help="encodings: every n-th page")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-formats", action="store_true")
    args = parser.parse_args()
    if not args.skip_formats:
        pages, render_rate = sample_pages(args.pdfs, args.dpi, args.sample_every)
        print(f"render to the Qwen2.5-VL size at {args.dpi} dpi: {render_rate:.0f} pages/s (one core)")
        bench_formats(pages)
    if not args.skip_e2e:
        print(f"\nend to end, `longvlm pool {args.pdfs} --dpi {args.dpi} --min-pages 0 --max-pages 0`\n")
        print("| workers | pages | documents | wall s | pages/s (wall) | pages per worker CPU-second | KB/page |")
        print("|---|---|---|---|---|---|---|")
        for workers in args.workers:
            bench_end_to_end(args.pdfs, args.dpi, workers)


if __name__ == "__main__":
    main()
