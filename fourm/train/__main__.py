"""``python -m fourm.train`` / ``accelerate launch -m fourm.train``: the same as ``fourm train``.

A launcher runs a module, so training has this entry of its own (:mod:`fourm.train.command`): the
library never imports the CLI above it.
"""

import sys

from fourm.train.command import main

sys.exit(main())
