"""Logging set-up and error reporting shared by the command lines of all stages."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from stages.errors import KNOWN_ERRORS

LOG_FORMAT = "%(asctime)s %(levelname)s %(module)s: %(message)s"


def run_stage(stage: Callable[[argparse.Namespace], None], args: argparse.Namespace, prog: str) -> int:
    """Run ``stage(args)`` and return the exit status: 0 on success, 1 on a known error.

    Log records go through tqdm while the stage runs, so they do not break progress bars.
    A known error (see ``stages.errors.KNOWN_ERRORS``) is printed as ``<prog>: error: <message>``
    on stderr.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        with logging_redirect_tqdm():
            stage(args)
    except KNOWN_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0
