"""`python -m panaversity_fs` runs the command-line entry point."""

from panaversity_fs.cli import run

run()
