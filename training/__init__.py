"""``longvlm train``: LongPT continued pre-training of Qwen2.5-VL on Megatron-Core (docs/training.md).

Components, each replaceable: ``config`` (the recipe), ``model`` (chunks, freezing, DDP),
``optimizer`` (optimizer and LR schedule), ``data`` (datasets checked against the model, loaders),
``step`` (the pipeline-scheduled step), ``checkpoint``, ``metrics``, ``guard`` (bad losses),
``signals`` (preemption), ``run_dir``; ``trainer`` wires them.
"""
