"""``longvlm eval``: long-context evaluation of Qwen2.5-VL checkpoints at 32K-512K tokens.

Tasks (``run.TASKS``): ``niah`` (needles in contexts of pool pages, ``niah.py``) and ``docqa``
(long-document VQA, ``docqa.py``); ``score.py`` scores existing predictions with the
MMLongBench-Doc rules (``scoring.py``). Prompts are built with the training sample renderer
(``prompt.py``, ``pages.py``), run by a backend (``backends/``: ``hf``, ``openai``), and written
resumably (``results.py``). See docs/eval.md.
"""
