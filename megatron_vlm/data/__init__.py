"""Reading built datasets into model-ready micro-batches."""
