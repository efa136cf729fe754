"""`python -m panaversity_fs` runs the command-line entry point."""

from panaversity_fs.ops.cli import run

run()
