"""The one exception type the ``longvlm`` command line reports without a traceback."""


class LongVLMError(Exception):
    """Bad input or environment that the user must fix (a file, a key, an option), with the reason.

    Each stage's error type derives from it; ``longvlm`` prints ``longvlm COMMAND: error: ...``
    and exits with status 2. Anything else is a bug and keeps its traceback. The message is one line
    (a reason quoted from a library that spans lines is joined with ``; ``).
    """

    def __init__(self, message: object = "", *args: object):
        text = str(message)
        if "\n" in text or "\r" in text:
            text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
        super().__init__(text, *args)


class ConfigError(LongVLMError, ValueError):
    """An option value or combination that cannot work; the message names the option."""


class OutputExistsError(LongVLMError, FileExistsError):
    """The output already exists and the stage will not overwrite it."""
