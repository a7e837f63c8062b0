"""PoolConfig: the options of ``longvlm pool`` (each declared once, with the paper's defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from megatron_vlm.errors import ConfigError
from megatron_vlm.models.registry import DEFAULT_FAMILY, family_names, get_family
from megatron_vlm.utils.checks import MAX_DPI, MAX_IMAGE_PIXELS, MAX_WAIT_S, MAX_WORKERS, check_number

ENCODINGS = ("auto", "png", "jpeg")


@dataclass
class PoolConfig:
    inputs: list[str] = field(metadata={
        "positional": True, "metavar": "INPUT",
        "help": "PDF files, folders (searched recursively for *.pdf) or text files listing one path "
                "per line. With --merge: the shard pool directories to merge."})
    output: str = field(metadata={"flag": "-o", "metavar": "POOL_DIR", "help": "output pool directory"})
    min_pages: int = field(default=32, metadata={
        "help": "reject documents with fewer pages (the paper keeps 32-50 pages; 0 = no limit)"})
    max_pages: int = field(default=50, metadata={
        "help": "reject documents with more pages (0 = no limit)"})
    family: str = field(default=DEFAULT_FAMILY, metadata={
        "choices": family_names(),
        "help": "model family whose image geometry pages are rendered for (sides multiples of its patch x merge: "
                "28 px for Qwen2.5-VL, 32 for Qwen3-VL); a pool feeds any family (pages are resized at load time)"})
    dpi: int = field(default=144, metadata={"help": "render resolution before the family's resize"})
    min_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize lower bound on page pixels (default: the family's preprocessor's)"})
    max_pixels: int | None = field(default=None, metadata={
        "help": "smart_resize upper bound on page pixels (default: the family's preprocessor's)"})
    exclude_hashes: str | None = field(default=None, metadata={
        "metavar": "FILE",
        "help": "file of SHA-256 hex digests (one per line, '#' comments) of PDFs to reject as "
                "contaminated, e.g. the evaluation benchmarks' PDFs"})
    encoding: str = field(default="auto", metadata={
        "choices": ENCODINGS,
        "help": "page image encoding: auto = lossless PNG (grayscale when the page is gray), but "
                "JPEG for photographic pages where that is much smaller; png = lossless PNG for "
                "every page; jpeg = JPEG for every page"})
    jpeg_quality: int = field(default=92, metadata={
        "help": "JPEG quality, 4:4:4 (92 keeps rendered pages above 40 dB PSNR)"})
    min_psnr: float = field(default=40.0, metadata={
        "help": "auto encoding: a photographic page is stored as JPEG only if its PSNR against the "
                "render is at least this many dB, else as lossless PNG (0 = do not check)"})
    tables: bool = field(default=True, metadata={
        "help": "detect tables with PyMuPDF's table finder (on pages with ruled regions)"})
    workers: int = field(default=1, metadata={"help": "worker processes"})
    page_timeout: float = field(default=60.0, metadata={
        "help": "seconds one page (render + layout + encode) may take before its document is "
                "rejected as render_timeout (0 = no limit)"})
    shard: int = field(default=0, metadata={"help": "this job's shard index (0-based)"})
    num_shards: int = field(default=1, metadata={
        "help": "split the input deterministically into this many shards (e.g. a SLURM job array: "
                "--shard $SLURM_ARRAY_TASK_ID); merge the shard pools with --merge"})
    merge: bool = field(default=False, metadata={
        "help": "merge the shard pools given as INPUT into POOL_DIR (deduplicating across shards)"})
    chunk_docs: int = field(default=16, metadata={
        "help": "documents per resumable chunk, at most (a killed run redoes at most one chunk per "
                "worker; small inputs get smaller chunks so that every worker has work)"})
    keep_work: bool = field(default=False, metadata={
        "help": "keep the work folder .POOL_DIR.work (the finished chunks, beside POOL_DIR) after the "
                "pool is complete"})
    allow_empty: bool = field(default=False, metadata={
        "help": "exit 0 even if no document is accepted (by default that exits 1: usually a wrong "
                "option such as --min-pages; the pool is written either way)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        geometry = get_family(self.family).geometry
        self.min_pixels = geometry.min_pixels if self.min_pixels is None else self.min_pixels
        self.max_pixels = geometry.max_pixels if self.max_pixels is None else self.max_pixels
        for name in ("min_pages", "max_pages", "min_pixels", "max_pixels", "shard"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=0)
        for name in ("workers", "chunk_docs", "num_shards"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=1,
                         le=MAX_WORKERS if name == "workers" else None)
        check_number("--dpi", self.dpi, ge=1, le=MAX_DPI)
        check_number("--min-pixels", self.min_pixels, le=MAX_IMAGE_PIXELS)
        check_number("--min-psnr", self.min_psnr, ge=0, le=100)
        check_number("--page-timeout", self.page_timeout, ge=0, le=MAX_WAIT_S)
        if self.max_pages and self.min_pages > self.max_pages:
            raise ConfigError(f"--min-pages {self.min_pages} > --max-pages {self.max_pages}")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"--min-pixels {self.min_pixels} > --max-pixels {self.max_pixels}")
        if not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"--shard {self.shard} must be in [0, --num-shards {self.num_shards})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}")
        self.inputs = [str(p) for p in self.inputs]
        self.output = str(self.output)

    def content_options(self) -> dict:
        """The options that determine the pool's content (a resumed run must use the same)."""
        skip = {"inputs", "output", "workers", "progress", "keep_work", "merge", "shard", "num_shards",
                "chunk_docs", "page_timeout", "allow_empty"}
        return {k: v for k, v in asdict(self).items() if k not in skip}
