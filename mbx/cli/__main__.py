"""`python -m mbx.cli`: the same as the `mbx` command."""
from mbx.cli import main

main()
