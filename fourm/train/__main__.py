"""``python -m fourm.train`` / ``accelerate launch -m fourm.train``: the same as ``fourm train``."""

import sys

from fourm.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
