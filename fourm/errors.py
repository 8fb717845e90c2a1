"""How a command reports bad input: one line on stderr that names the problem, and exit code 2.

A wrong value or a missing or damaged file (ValueError, LookupError, OSError) is the user's to fix, so
it is one line; the traceback comes only with ``-v``, for a bug report. Anything else is a bug and
raises. Shared by the ``fourm`` sub-commands and ``python -m fourm.train``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable


def run_command(prog: str, fn: Callable[[], object], verbose: bool = False) -> int:
    """Call ``fn`` as the command ``prog`` (``"fourm train"``): 0 when it returns, 2 on bad input."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        fn()
    except (ValueError, LookupError, OSError) as e:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (its type's name if it has none), with the file an OSError
    names when the message does not."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text
