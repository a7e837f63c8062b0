"""Offline data pipelines: document pool, task synthesis, dataset build."""
