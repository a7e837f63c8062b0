"""Task synthesis (``longvlm synth``): long-document VQA (short-to-long) and OCR transcription."""

from preprocess.synth.config import ALL_TASKS, SynthConfig, SynthError
from preprocess.synth.run import SynthResult, run_synth

__all__ = ["ALL_TASKS", "SynthConfig", "SynthError", "SynthResult", "run_synth"]
