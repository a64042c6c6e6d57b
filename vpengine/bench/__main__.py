"""``python -m vpengine.bench``: the same as ``vpengine bench``."""
import sys

# Through the ``vpengine`` command itself, not bench.cli.main: only it turns
# SIGTERM into a clean stop (a killed run still prints its table).
from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
