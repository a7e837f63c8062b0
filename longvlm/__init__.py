"""longvlm: the front door of the LongPT stack (the ``longvlm`` command and its Python twin).

``longvlm.cli`` is the command line, ``longvlm.api`` the same commands as Python functions, and
``longvlm.demo`` the whole pipeline in miniature. They call the stages (``preprocess``,
``checkpoint_tools``, ``training``, ``evaluation``, ``launch``), which build on the
``megatron_vlm`` core.
"""

from megatron_vlm import __version__

__all__ = ["__version__"]
