"""Reading built datasets into model-ready micro-batches (format: ``megatron_vlm.formats.dataset``)."""
