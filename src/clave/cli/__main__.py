"""`python -m clave.cli …` runs the `clave` command."""

from clave.cli.main import main

main()
