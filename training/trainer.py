"""``Trainer``: wires the components (model, optimizer and schedule, data, checkpoints, metrics, guard,
preemption) into a run, started by torchrun, srun or a plain ``python`` for one process.

Everything that can be checked is checked before any work (:func:`preflight`); then the run
directory is written, the process groups start, the model is built and either resumed from the run's
latest checkpoint or loaded from its starting point, and the loop runs to the step budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from megatron_vlm import runtime
from megatron_vlm.data.loader import stop_workers
from megatron_vlm.runtime.transformer_engine import transformer_engine_error, transformer_engine_version
from training.checkpoint import Checkpointer, TrainState, latest_checkpoint
from training.config import RecipeError, TrainConfig, to_yaml
from training.data import DataPlan, image_share, plan_data, stream_length, train_loader, valid_loader
from training.guard import LossGuard, TrainingStopped
from training.metrics import MetricsLogger, peak_flops, warn
from training.model import build_model
from training.optimizer import build_optimizer, build_scheduler
from training.run_dir import StartPoint, check_run_dir, convert_start, start_point, write_config
from training.signals import REQUEUE_EXIT, PreemptionHandler
from training.step import run_schedule


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the starting point, the data plan, the data-parallel size, a resume."""

    start: StartPoint
    plan: DataPlan
    dp: int
    resume: bool


def preflight(config: TrainConfig, run_dir: Path, world_size: int, rank: int = 0, gpu: bool | None = None) -> Preflight:
    """Every check that needs no process group and writes nothing; a ``RecipeError`` naming the key.
    The run directory is checked by rank 0 only (the others may see it while rank 0 writes it).

    ``gpu``: whether the run will have GPUs (default: whether this machine has one); given, the run is
    checked for another machine (a job script written on a login node), so Transformer Engine is not
    looked for here.
    """
    config.check()
    resume = check_run_dir(run_dir, config) if rank == 0 else False  # before the inputs: it is the cheapest check
    layout = config.parallel
    try:
        dp = layout.data_parallel_size(world_size)
    except Exception as err:
        raise RecipeError(f"parallel: {err}") from None
    step_rows = config.train.micro_batch_size * dp
    if config.train.global_batch_size % step_rows:
        raise RecipeError(f"train.global_batch_size {config.train.global_batch_size} is not a multiple of "
                          f"micro_batch_size x data-parallel size = {config.train.micro_batch_size} x {dp}")
    here = gpu is None
    gpu = runtime.use_cuda() if here else gpu
    if config.train.precision != "fp32" and not gpu:
        raise RecipeError(f"train.precision={config.train.precision} needs a GPU (Megatron's mixed-precision "
                          "optimizers take CUDA tensors); use train.precision=fp32 on this machine")
    if here:
        needs = [key for key, used in (("model.transformer_impl=te", config.model.transformer_impl == "te"),
                                       ("model.attention_backend=te", config.model.attention_backend == "te")) if used]
        problem = transformer_engine_error() if needs else None
        if problem:
            raise RecipeError(f"{' and '.join(needs)} need{'s' if len(needs) == 1 else ''} Transformer Engine "
                              f"({problem}); install it with `pip install -e .[gpu]`, or use model.transformer_impl=local, "
                              "model.attention_backend=torch and train.precision bf16")
    start = start_point(config)
    arch = start.arch
    problems = config.backend_problems(arch, transformer_engine_version() if here else None)
    if problems:
        raise RecipeError("; ".join(problems))
    try:
        layout.check_model(arch.num_layers, arch.num_heads, arch.num_query_groups, arch.vision_heads)
        context = config.model.rope.context_length(arch)
        config.model.rope.resolve(arch.rope_theta, arch.head_dim)
    except RecipeError:
        raise
    except Exception as err:
        raise RecipeError(f"parallel / model: {err}") from None
    plan = plan_data(config, arch, context, start.tokenizer_dir)
    return Preflight(start, plan, dp, resume)


class Trainer:
    """One training run in ``run_dir`` (call :meth:`run` on every rank).

    As torchtitan's trainer: :meth:`run` assembles the components (model, optimizer and schedule,
    checkpointer, loader, metrics, guard), :meth:`train` loops over the steps and decides after each whether
    to save (:meth:`should_save`) or leave for a preemption, and :meth:`train_step` is one optimizer step.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path):
        self.config, self.run_dir = config, Path(run_dir)
        env = runtime.read_dist_env()
        self.checked = preflight(config, self.run_dir, env.world_size, env.rank)
        self.rank0 = env.rank == 0

    def run(self) -> int:
        """Train to the step budget; the exit code (0, or ``REQUEUE_EXIT`` after a preemption signal)."""
        # from the start: a signal during start-up (SLURM signals the job's tasks) is saved on at the first step
        signals = PreemptionHandler(self.config.checkpoint.exit_signals)
        try:
            self._start()
            try:
                return self.train(signals)
            finally:
                self.checkpointer.finalize(blocking=True)
        finally:
            signals.close()

    def _start(self) -> None:
        """Write the run directory, start the process groups, build the components; resume or start fresh."""
        config, run_dir, checked = self.config, self.run_dir, self.checked
        if self.rank0:
            write_config(run_dir, config)
            convert_start(checked.start, run_dir)
        runtime.initialize_distributed(config.parallel, seed=config.train.seed)
        torch.distributed.barrier()  # the run directory and init/ exist for everyone
        resuming = latest_checkpoint(run_dir) is not None
        # a fresh run starts from the weights of its starting point; a resumed one from its latest checkpoint
        self.parts = build_model(config, checked.start.arch,
                                 load=None if resuming else checked.start.megatron_dir(run_dir))
        self.optimizer = build_optimizer(config.optimizer, self.parts, config.train.precision)
        self.plan = checked.plan
        self.scheduler = build_scheduler(config.optimizer, self.optimizer, self.plan.steps)
        self.checkpointer = Checkpointer(run_dir, self.parts, self.optimizer, self.scheduler,
                                         keep_last=config.checkpoint.keep_last, async_save=config.checkpoint.async_save,
                                         source=checked.start.source)
        layout_record = {"parallel": asdict(config.parallel), "world_size": torch.distributed.get_world_size()}
        if resuming:
            self.state = self.checkpointer.load(layout_record)
            self._say(f"resumed from {self.checkpointer.root} at step {self.state.iteration} "
                      f"({self.state.consumed_samples:,} rows consumed)")
        else:
            self.state = TrainState()
        self.state.layout, self.state.config_yaml = layout_record, to_yaml(config)
        self.share = image_share(config.parallel)
        self.num_micro = self.plan.global_batch_size // (config.train.micro_batch_size * checked.dp)
        self.guard = LossGuard(config.guard, self.state.recent_losses)

    def _say(self, message: str) -> None:
        if self.rank0:
            print(message, flush=True)

    def train(self, signals: PreemptionHandler) -> int:
        """Steps to the budget: each one trained, logged, validated at ``eval_interval`` and saved when
        :meth:`should_save` says; after a preemption signal, saved and left with ``REQUEUE_EXIT``."""
        config, plan, state, checkpointer = self.config, self.plan, self.state, self.checkpointer
        self.loader = train_loader(config, plan, state.consumed_samples)
        metrics = MetricsLogger(self.run_dir, plan.steps, enabled=self.rank0, tensorboard=config.logging.tensorboard,
                                log_interval=config.logging.log_interval, resume_from=state.iteration,
                                world_size=torch.distributed.get_world_size(),
                                peak_flops=peak_flops(config.logging.peak_tflops, config.train.precision),
                                device="GPU" if runtime.use_cuda() else "process")
        self._say(f"training {plan.steps} steps of {plan.global_batch_size} rows (<= {plan.seq_length:,} tokens), "
                  f"from step {state.iteration}; run directory {self.run_dir}")
        batches = iter(self.loader)
        try:
            for step in range(state.iteration + 1, plan.steps + 1):
                metrics.step(self.train_step(step, batches))
                if config.logging.eval_interval and step % config.logging.eval_interval == 0:
                    metrics.valid(step, self._validate())
                preempted = signals.agreed()
                if self.should_save(step, preempted):
                    checkpointer.save(state)
                checkpointer.finalize()
                if preempted:
                    checkpointer.finalize(blocking=True)
                    torch.distributed.barrier()  # leave together: a launcher may end the others at the first exit
                    self._say(f"{signals.received or 'a signal'}: saved step {step}; exiting with {REQUEUE_EXIT} "
                              "to be requeued (rerun the same command to resume)")
                    return REQUEUE_EXIT
        finally:
            stop_workers(batches)  # they ignore the exit signals: only this stops them
            metrics.close()
        return 0

    def should_save(self, step: int, preempted: bool) -> bool:
        """Save after a preemption signal, at the last step and every ``checkpoint.save_interval`` steps."""
        interval = self.config.checkpoint.save_interval
        return preempted or step == self.plan.steps or bool(interval and step % interval == 0)

    def train_step(self, step: int, batches) -> dict:
        """One optimizer step over a global batch of micro-batches from ``batches``: forward and backward, the
        guard's verdict on the loss (stop, skip the update, or warn), the update and the schedule; the counters
        advance. Returns the step's metrics record."""
        config, state, guard, optimizer = self.config, self.state, self.guard, self.optimizer
        start = time.perf_counter()
        for chunk in self.parts.chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        result, _ = run_schedule(self.parts.chunks, batches, self.num_micro, self.share,
                                 stream_length(config, self.plan), forward_only=False, arch=self.checked.start.arch)
        verdict = guard.judge(result.loss)
        if verdict is not None:
            action, what = verdict
            note = f"step {step}: {what}; samples: {self._samples()}"
            if action == "stop":
                raise TrainingStopped(f"{note} (guard: stop; set guard.on_nan/on_spike=skip to skip such steps)")
            warn(note + (" (update skipped)" if action == "skip" else ""))
        grad_norm, lr = None, optimizer.param_groups[0]["lr"]
        if verdict is None or verdict[0] == "warn":
            updated, grad_norm, _ = optimizer.step()
            if updated:
                self.scheduler.step(increment=1)
            if verdict is None:
                guard.accept(result.loss)
        state.iteration, state.consumed_samples = step, state.consumed_samples + self.plan.global_batch_size
        state.recent_losses = guard.recent
        step_time = time.perf_counter() - start
        return {
            "step": step, "loss": result.loss, "lr": lr,
            "grad_norm": grad_norm, "tokens": result.real_tokens, "answer_tokens": result.answer_tokens,
            "computed_tokens": result.computed_tokens, "padding_ratio": result.computed_tokens / max(1, result.real_tokens),
            "step_time": step_time, "tokens_per_s": result.real_tokens / step_time,
            "data_wait": result.data_wait, "model_flops": result.model_flops,
            "consumed_samples": state.consumed_samples,
            **({"max_memory_gib": torch.cuda.max_memory_allocated() / 2**30} if runtime.use_cuda() else {}),
            **({"note": "skipped" if verdict[0] == "skip" else "warned"} if verdict else {})}

    def _validate(self) -> dict:
        """Loss (mean over answer tokens) and token accuracy (argmax == answer) of ``eval_batches`` validation
        micro-batches per data-parallel rank: the teacher-forced scoring of ``longvlm eval --backend megatron``."""
        config, chunks = self.config, self.parts.chunks
        for chunk in chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                result, _ = run_schedule(chunks, iter(valid_loader(config, self.plan)), config.logging.eval_batches,
                                         self.share, stream_length(config, self.plan), forward_only=True, score=True)
        finally:
            for chunk in chunks:
                chunk.train()
        return {"loss": result.loss, "token_accuracy": result.accuracy, "answer_tokens": result.answer_tokens}

    def _samples(self) -> str:
        """The task instances of the current global batch, as ``tasks-file:line`` (known to every rank)."""
        items = self.loader.dataset
        start = self.state.consumed_samples
        out = []
        for position in range(start, start + self.plan.global_batch_size):
            d, pack = items.stream(position)
            dataset = items.datasets[d]
            files = dataset.meta["config"]["tasks"]
            for record in dataset.read_pack(pack)["samples"]:
                out.append(f"{Path(files[int(record[1])]).name}:{int(record[2])}")
        return ", ".join(out[:20]) + (f" ... ({len(out)} samples)" if len(out) > 20 else "")


def train(config: TrainConfig, run_dir: str | Path) -> int:
    """``longvlm train``: run (or resume) ``config`` in ``run_dir`` on this process's rank."""
    trainer = Trainer(config, run_dir)
    try:
        return trainer.run()
    finally:
        runtime.destroy()
