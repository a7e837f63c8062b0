"""Megatron-Core vision-language models: the shared VLM (``vlm``), configs, specs and modules, the image
geometry and mRoPE positions of the models' inputs, and one folder per family found through ``registry``."""
