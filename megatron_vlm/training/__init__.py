"""Training entry point and loop."""
