"""``python -m vpengine.bench``: the same as ``vpengine bench``."""
import sys

from .cli import main

sys.exit(main())
