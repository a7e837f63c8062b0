"""``longvlm study``: the paper's experiments as files (``recipes/study/``), run through the stages and
compared side by side (docs/study.md)."""
