"""Logging set-up and error reporting shared by the command lines of all stages."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from stages.errors import KNOWN_ERRORS

LOG_FORMAT = "%(asctime)s %(levelname)s %(module)s: %(message)s"


# Exit statuses of a process stopped by SIGINT (Ctrl-C) and SIGTERM, as shells report them.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def _exit_on_sigterm(signum, frame) -> None:
    # Raising SystemExit unwinds the stack, so temporary files and folders are removed.
    raise SystemExit(EXIT_TERMINATED)


def run_stage(stage: Callable[[argparse.Namespace], None], args: argparse.Namespace, prog: str) -> int:
    """Run ``stage(args)`` and return the exit status: 0 on success, 1 on a known error.

    Log records go through tqdm while the stage runs, so they do not break progress bars.
    A known error (see ``stages.errors.KNOWN_ERRORS``) is printed as ``<prog>: error: <message>``
    on stderr. Ctrl-C and SIGTERM stop the stage after its temporary outputs are removed, with
    exit status 130 or 143; rerunning the command resumes training from its last checkpoint.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with logging_redirect_tqdm():
            stage(args)
    except KNOWN_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs are unchanged, rerun the command to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
