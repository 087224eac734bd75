"""`python -m peer` and the one-file binary's entry point: the `pollen` command."""

from peer.cli import main

main()
