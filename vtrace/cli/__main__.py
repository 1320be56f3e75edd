"""`python -m vtrace.cli ...`: the same as the vtrace command."""

from vtrace.cli import main

main()
