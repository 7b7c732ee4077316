"""``python -m harmonixr.cli``."""

from harmonixr.cli import main

main()
