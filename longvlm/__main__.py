"""``python -m longvlm`` is the ``longvlm`` command."""

import sys

from longvlm.cli import main

sys.exit(main())
