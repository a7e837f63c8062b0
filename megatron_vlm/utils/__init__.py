"""Small shared helpers (config <-> CLI, atomic files, progress)."""
