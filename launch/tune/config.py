"""Options of ``longvlm tune`` (``TuneConfig``: each field is one CLI option and one ``longvlm.api.tune`` keyword)."""

from __future__ import annotations

from dataclasses import dataclass, field

from launch.tune.presets import MODELS
from megatron_vlm.errors import ConfigError
from megatron_vlm.hardware import GPUS
from megatron_vlm.models.config import ATTENTION_BACKENDS, RECOMPUTE_MODES, TRANSFORMER_IMPLS
from megatron_vlm.utils.atomic import check_output_file
from megatron_vlm.utils.checks import MAX_GPUS, check_number

GPU_CHOICES = (*GPUS, "cpu")
PRECISIONS = ("fp32", "bf16", "fp8")
DEFAULT_SEQ_LENGTH = 131072
MAX_SEQ_LEN = 2 ** 24  # 16M tokens, 32x the paper's longest: a synthetic row lists its pages one by one


@dataclass
class TuneConfig:
    model: str = field(metadata={
        "metavar": "MODEL", "help": f"a preset ({', '.join(MODELS)}), a Hugging Face checkpoint directory or "
        "config.json, a Megatron checkpoint ('longvlm convert' or training), or a training recipe (YAML file or "
        "built-in name) whose settings become the defaults below"})
    gpus: int = field(metadata={"help": "GPUs in the job"})
    seq_length: int | None = field(default=None, metadata={"was": ("seq_len",), "help": (
        f"packed row length in tokens (default: the recipe's train.seq_length, the datasets' seq_length, else "
        f"{DEFAULT_SEQ_LENGTH})")})
    global_batch: int | None = field(default=None, metadata={
        "metavar": "ROWS", "help": "rows per optimizer step (default: the recipe's train.global_batch_size)"})
    global_batch_tokens: int | None = field(default=None, metadata={
        "metavar": "TOKENS", "help": "instead of --global-batch: tokens per step, in rows of --seq-length (rounded down)"})
    gpus_per_node: int = field(default=8, metadata={"help": "GPUs per node (NVLink domain)"})
    gpu: str = field(default="h100", metadata={
        "choices": GPU_CHOICES, "help": "GPU preset (docs/tune.md lists the figures); 'cpu' measures this machine"})
    gpu_memory_gib: float | None = field(default=None, metadata={"help": "override: device memory (GiB)"})
    peak_tflops: float | None = field(default=None, metadata={"help": "override: dense bf16 matmul peak (TFLOP/s)"})
    fp8_tflops: float | None = field(default=None, metadata={"help": "override: dense fp8 matmul peak (TFLOP/s)"})
    hbm_gbps: float | None = field(default=None, metadata={"help": "override: device memory bandwidth (GB/s)"})
    nvlink_gbps: float | None = field(default=None, metadata={
        "help": "override: GPU-to-GPU bandwidth inside a node, per direction (GB/s)"})
    network_gbps: float | None = field(default=None, metadata={
        "help": "override: bandwidth between nodes per GPU, per direction (GB/s)"})
    host_memory_gib: float | None = field(default=None, metadata={"help": "override: CPU memory per node (GiB)"})
    precision: str | None = field(default=None, metadata={
        "choices": PRECISIONS, "help": "training precision (default: the recipe's, else bf16; fp32 with --gpu cpu); "
        "fp8 needs --transformer-impl te"})
    transformer_impl: str | None = field(default=None, metadata={
        "choices": TRANSFORMER_IMPLS, "help": "the layers' linears and norms: local (Megatron-Core's) or te "
        "(Transformer Engine; FP8) (default: the recipe's, else local)"})
    attention_backend: str | None = field(default=None, metadata={
        "choices": ATTENTION_BACKENDS, "help": "the core attention: torch (SDPA; CP all-gathers K/V) or te (Transformer "
        "Engine; CP as a p2p ring, a2a or all_gather, each weighed) (default: the recipe's, else torch)"})
    distributed_optimizer: bool | None = field(default=None, metadata={
        "help": "Megatron's distributed optimizer: optimizer state sharded over DP x CP (default: the recipe's, "
                "else on; off with --gpu cpu, as training runs there)"})
    data: list[str] | None = field(default=None, metadata={
        "metavar": "DATA_PREFIX", "help": "plan for the rows of built datasets (longvlm build): real sample lengths, "
        "page images and answer tokens (default: the recipe's data.train, else synthetic rows)"})
    sample_tokens: int | None = field(default=None, metadata={
        "help": "synthetic rows: tokens per packed sample (default: one sample per row)"})
    dpi: float = field(default=144.0, metadata={"help": "synthetic rows: page render resolution (A4 pages)"})
    image_share: float = field(default=0.9, metadata={"help": "synthetic rows: share of tokens that are page images"})
    answer_tokens: int = field(default=1024, metadata={"help": "synthetic rows: loss (answer) tokens per row"})
    micro_batch: list[int] = field(default_factory=lambda: [1, 2], metadata={
        "help": "micro-batch sizes (rows) to consider"})
    recompute: list[str] = field(default_factory=lambda: list(RECOMPUTE_MODES), metadata={
        "choices": RECOMPUTE_MODES, "help": "activation recompute modes to consider; selective is weighed with each "
        "module set: attn (core attention), norm+act (norm outputs and the MLP activation: element-wise), both"})
    tp: list[int] | None = field(default=None, metadata={"help": "only these tensor-parallel sizes"})
    pp: list[int] | None = field(default=None, metadata={"help": "only these pipeline-parallel sizes"})
    cp: list[int] | None = field(default=None, metadata={"help": "only these context-parallel sizes"})
    fragmentation: float = field(default=0.10, metadata={
        "help": "allocator fragmentation allowance, as a fraction of activations"})
    reserved_gib: float | None = field(default=None, metadata={
        "help": "per-GPU memory for CUDA context, NCCL, workspaces (default: 3; 0 with --gpu cpu)"})
    gemm_efficiency: float = field(default=0.70, metadata={"help": "achieved fraction of the matmul peak"})
    attention_efficiency: float = field(default=0.45, metadata={
        "help": "achieved fraction of the bf16 peak in attention"})
    loader_workers: int | None = field(default=None, metadata={
        "help": "data loader workers per GPU process (default: the recipe's data.num_workers, else the loader's)"})
    prefetch_factor: int | None = field(default=None, metadata={
        "help": "micro-batches each loader worker prefetches (default: the recipe's data.prefetch, else the loader's)"})
    top: int = field(default=10, metadata={"help": "layouts to show"})
    explain: int | None = field(default=None, metadata={
        "metavar": "RANK", "help": "break down the layout ranked RANK (1 = fastest): memory per stage, time per part"})
    json: bool = field(default=False, metadata={"help": "print the ranked layouts as JSON"})
    write_recipe: str | None = field(default=None, metadata={
        "metavar": "OUT.yaml", "help": "write a training recipe with the layout ranked --explain RANK (default 1): "
        "the input recipe's other settings, or the defaults (docs/training.md)"})

    def check(self) -> None:
        """Every option on its own (``launch.tune.run.run`` checks them against the model and the cluster)."""
        for name in ("gpus", "gpus_per_node"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=1, le=MAX_GPUS)
        for name in ("top", "global_batch", "global_batch_tokens", "sample_tokens",
                     "answer_tokens", "prefetch_factor", "explain"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), ge=1)
        check_number("--seq-length", self.seq_length, ge=1, le=MAX_SEQ_LEN)
        check_number("--loader-workers", self.loader_workers, ge=0)
        for name in ("gpu_memory_gib", "peak_tflops", "hbm_gbps", "nvlink_gbps", "network_gbps", "host_memory_gib",
                     "dpi"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), gt=0)
        check_number("--fp8-tflops", self.fp8_tflops, ge=0)
        check_number("--reserved-gib", self.reserved_gib, ge=0)
        check_number("--image-share", self.image_share, ge=0, lt=1)
        check_number("--fragmentation", self.fragmentation, ge=0, le=1)
        for name in ("gemm_efficiency", "attention_efficiency"):
            check_number(f"--{name.replace('_', '-')}", getattr(self, name), gt=0, le=1)
        for name in ("micro_batch", "tp", "pp", "cp"):
            for value in getattr(self, name) or ():
                check_number(f"--{name.replace('_', '-')}", value, ge=1)
        if self.global_batch is not None and self.global_batch_tokens is not None:
            raise ConfigError("give one of --global-batch (rows) and --global-batch-tokens, not both")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ConfigError(f"--gpus {self.gpus} is not a whole number of nodes of --gpus-per-node "
                              f"{self.gpus_per_node}")
        for name in ("tp", "pp", "cp"):
            if bad := [v for v in getattr(self, name) or () if self.gpus % v]:
                raise ConfigError(f"--{name} {' '.join(map(str, bad))} does not divide --gpus {self.gpus}: no layout "
                                  "can use it")
        if self.write_recipe:
            check_output_file(self.write_recipe, "--write-recipe", replace=False)

