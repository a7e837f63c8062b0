"""The error every expected bad input of the build stage raises (printed without a traceback)."""


class BuildError(ValueError):
    """A bad input or option: the message names the file/line or option and the reason."""
