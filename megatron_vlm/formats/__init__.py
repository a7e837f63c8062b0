"""On-disk formats shared by the stages that write them and the training that reads them.

``pool`` (a document pool: ``longvlm pool`` writes it; synth, build and the loader read it),
``dataset`` (a built dataset: ``longvlm build`` writes it, the loader and ``stats`` read it) and
``checkpoint`` (Megatron ``dist_checkpointing`` checkpoints: ``convert`` and training write and
read them). See docs/formats.md and docs/checkpoints.md.
"""
