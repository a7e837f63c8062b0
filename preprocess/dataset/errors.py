"""The error every expected bad input of the build stage raises (printed without a traceback)."""

from megatron_vlm.errors import LongVLMError


class BuildError(LongVLMError, ValueError):
    """A bad input or option: the message names the file/line or option and the reason."""
