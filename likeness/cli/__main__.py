"""`python -m likeness.cli`: the same command line as `likeness`."""

from likeness.cli import main

main()
