"""``longvlm build``: tokenize, length-control, mix and pack tasks into Megatron indexed datasets."""
