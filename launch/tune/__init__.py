"""``longvlm tune``: predict memory and step time of every buildable layout and rank the ones that fit.

Modules, one job each: ``presets`` (GPUs and model configs), ``workload`` (what a row holds),
``layout`` (a candidate), ``memory`` and ``timing`` (the cost model), ``search`` (enumerate, rank),
``report`` (table, explain, JSON), ``calibrate`` (this CPU as a "GPU"), ``measure`` (a real CPU
step, to check the model), ``cli`` (options, recipes in and out). Method: docs/tune.md.
"""
