"""`python -m knowacq` runs the command line."""

from knowacq.cli import main

main()
