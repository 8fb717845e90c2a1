"""``python -m fourm ...``: the same command line as the ``fourm`` script, for an environment whose
scripts folder is not on PATH."""

from fourm.cli import main

raise SystemExit(main())
