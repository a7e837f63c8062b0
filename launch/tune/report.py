"""``longvlm tune`` output: the ranked table, one layout broken down (``--explain``), JSON, and the
reason when nothing fits."""

from __future__ import annotations

from launch.tune.memory import GIB
from launch.tune.search import Candidate, Plan


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def _layers(c: Candidate, num_layers: int) -> str:
    return "/".join(str(n) for n in c.layout.stage_layers(num_layers))


def candidate_dict(c: Candidate, num_layers: int) -> dict:
    """One layout as JSON: the layout, memory per stage (GiB) and time parts (seconds per step)."""
    return {
        "layout": {**c.layout.to_dict(), "stage_layers": c.layout.stage_layers(num_layers)},
        "fits": c.fits,
        "peak_memory_gib": c.peak.total / GIB,
        "peak_stage": c.peak.stage,
        "memory_gib": [memory_parts(m) for m in c.memory],
        "step_seconds": c.time.step,
        "tokens_per_second_per_gpu": c.time.tokens_per_gpu,
        "mfu": c.time.mfu,
        "time_seconds": c.time.parts,
        "stage_micro_batch_seconds": list(c.time.stage_times),
    }


def memory_parts(m) -> dict:
    a = m.activations
    return {
        "stage": m.stage,
        "weights": m.states.weights / GIB,
        "gradients": m.states.gradients / GIB,
        "optimizer": m.states.optimizer / GIB,
        "activations_language": a.language * m.in_flight / GIB,
        "activations_vision": a.vision * m.in_flight / GIB,
        "logits": a.logits * m.in_flight / GIB,
        "inputs": a.inputs / GIB,
        "micro_batches_in_flight": m.in_flight,
        "backward_temporaries": m.transient / GIB,
        "communication_buffers": m.comm_buffers / GIB,
        "fragmentation": m.fragmentation / GIB,
        "reserved": m.reserved / GIB,
        "total": m.total / GIB,
    }


def plan_dict(plan: Plan, num_layers: int, top: int) -> dict:
    req = plan.request
    return {
        "workload": plan.workload.describe(),
        "gpu": {**req.gpu.__dict__},
        "gpus": req.gpus, "gpus_per_node": req.gpus_per_node, "global_batch_rows": req.global_batch,
        "setup": {**req.setup.__dict__},
        "ranked": [candidate_dict(c, num_layers) for c in plan.ranked[:top]],
        "feasible_layouts": len(plan.ranked),
        "infeasible": infeasible_reason(plan) if not plan.ranked else None,
        "rejected": plan.rejected,
        "host_memory_gib": {"per_gpu": plan.host.per_gpu / GIB, "per_node": plan.host.per_node / GIB,
                            "capacity": plan.host.capacity / GIB, "fits": plan.host.fits},
        "warnings": warnings(plan),
    }


def format_table(plan: Plan, num_layers: int, top: int) -> str:
    req = plan.request
    head = (f"{req.gpus} x {req.gpu.name} ({req.gpus_per_node} per node), {plan.workload.describe()}; "
            f"global batch {req.global_batch} rows; {req.setup.precision}, attention backend "
            f"{req.setup.attention_backend}, {req.setup.transformer_impl} linears"
            f"{', distributed optimizer' if req.setup.distributed_optimizer else ''}")
    lines = [head, ""]
    if not plan.ranked:
        return "\n".join(lines + [infeasible_reason(plan)] + [f"warning: {w}" for w in warnings(plan)])
    cols = f"{'#':>3} {'TP':>3} {'PP':>3} {'CP':>3} {'CP comm':<11}{'DP':>4} {'SP':>3} {'MB':>3} {'recompute':<14}" \
           f"{'stage layers':<14}" \
           f"{'mem GiB':>8} {'step s':>8} {'tok/s/GPU':>10} {'MFU':>6}"
    lines.append(cols)
    for i, c in enumerate(plan.ranked[:top], 1):
        lo = c.layout
        comm = lo.parallel.cp_comm_type_for(req.setup.attention_backend) if lo.cp > 1 else "-"
        lines.append(f"{i:>3} {lo.tp:>3} {lo.pp:>3} {lo.cp:>3} {comm:<11}{lo.dp:>4} {'on' if lo.sp else '-':>3} "
                     f"{lo.micro_batch:>3} {lo.recompute_label:<14}{_layers(c, num_layers):<14}"
                     f"{c.peak.total / GIB:>8.1f} {c.time.step:>8.2f} {c.time.tokens_per_gpu:>10,.0f} "
                     f"{c.time.mfu:>6.1%}")
    if len(plan.ranked) > top:
        lines.append(f"... {len(plan.ranked) - top} more layouts fit (--top N shows more)")
    lines += [f"warning: {w}" for w in warnings(plan)]
    return "\n".join(lines)


def explain(c: Candidate, plan: Plan, num_layers: int) -> str:
    """One layout, part by part: memory of every stage, time of one step."""
    lo = c.layout
    lines = [f"{lo.label()}, SP {'on' if lo.sp else 'off'}, micro-batch {lo.micro_batch}, recompute {lo.recompute_label}, "
             f"language layers per stage {_layers(c, num_layers)}; "
             f"{plan.request.global_batch // (lo.dp * lo.micro_batch)} micro-batches per step", ""]
    names = [("weights", "weights"), ("gradients", "gradient buffer (fp32)"),
             ("optimizer", "optimizer state (Adam + fp32 master, sharded over DP x CP)"),
             ("activations_language", "activations: language layers"),
             ("activations_vision", "activations: vision tower"), ("logits", "final norm + answer-only logits"),
             ("inputs", "micro-batch inputs (pixels, ids, positions)"),
             ("backward_temporaries", "backward temporaries"), ("communication_buffers", "communication buffers"),
             ("fragmentation", "fragmentation allowance"), ("reserved", "CUDA context / NCCL / workspaces"),
             ("total", "total")]
    parts = [memory_parts(m) for m in c.memory]
    lines.append("memory per GPU (GiB)" + "".join(f"{'stage ' + str(p['stage']):>10}" for p in parts))
    for key, label in names:
        lines.append(f"  {label:<58}" + "".join(f"{p[key]:>10.2f}" for p in parts))
    lines.append(f"  {'micro-batches in flight':<58}" + "".join(f"{p['micro_batches_in_flight']:>10}" for p in parts))
    lines.append(f"  capacity {c.capacity / GIB:.1f} GiB: {'fits' if c.fits else 'DOES NOT FIT'}")
    lines += ["", f"step time {c.time.step:.2f} s (slowest stage, summed over the step's micro-batches):"]
    labels = {"gemm": "matmuls (linear layers, logits)", "attention": "attention (real segment lengths)",
              "recompute": "recomputation", "memory": "activation memory traffic", "tp_comm": "TP communication",
              "cp_comm": "CP communication (exposed)", "pp_comm": "pipeline send/receive",
              "bubble": "pipeline bubble (fill + drain)", "dp_comm": "DP x CP gradient reduce / gather (exposed)",
              "optimizer": "optimizer step"}
    for key, label in labels.items():
        lines.append(f"  {label:<58}{c.time.parts[key]:>10.3f}")
    lines.append(f"  tokens/s per GPU {c.time.tokens_per_gpu:,.0f}, MFU {c.time.mfu:.1%}")
    return "\n".join(lines)


def infeasible_reason(plan: Plan) -> str:
    gpu = plan.request.gpu
    if plan.smallest is None:
        reasons = "; ".join(f"{r} ({n} layouts)" for r, n in plan.rejected.items()) or "no layout"
        return f"no buildable layout for {plan.request.gpus} GPUs: {reasons}"
    s = plan.smallest
    p = memory_parts(s.peak)
    acts = p["activations_language"] + p["activations_vision"] + p["logits"] + p["backward_temporaries"]
    states = p["weights"] + p["gradients"] + p["optimizer"]
    text = (f"does not fit in {gpu.memory_gib:.1f} GiB ({gpu.name}) at any layout: smallest is "
            f"{s.layout.label()} MB{s.layout.micro_batch} recompute={s.layout.recompute_label} at {s.peak.total / GIB:.1f} GiB "
            f"(stage {s.peak.stage}); activations {acts:.0f} GiB, model states {states:.0f} GiB")
    full = plan.smallest_full_recompute
    if full is not None:
        text += f"; recompute=full would bring it to {full.peak.total / GIB:.1f} GiB"
    hint = "more GPUs (DP x CP shards the optimizer, CP the activations)" if states > acts else \
        "more context parallelism (--gpus), a shorter --seq-length, or fewer answer tokens"
    return text + f". Try {hint}."


def warnings(plan: Plan) -> list[str]:
    out = list(plan.notes)
    h = plan.host
    if not h.fits:
        out.append(f"host memory: the data loaders hold {h.per_node / GIB:.0f} GiB per node "
                   f"({h.per_gpu / GIB:.1f} GiB per GPU process: loader workers x prefetch + 1 micro-batches of "
                   f"float32 pixels), more than the node's {h.capacity / GIB:.0f} GiB; lower --loader-workers / "
                   f"--prefetch-factor or set --host-memory-gib")
    return out
