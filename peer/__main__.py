"""`python -m peer` and the one-file binary's entry point: the `pollen` command."""

import multiprocessing

from peer.cli import main

if __name__ == "__main__":
    # The one-file binary starts its parsing worker (`peer/body_parser.py`) by running itself
    # again: this makes that run the worker, not the command. A no-op elsewhere.
    multiprocessing.freeze_support()
    main()
