"""``python -m fedlora ...`` is the ``fedlora`` command."""

from fedlora.cli import main

main()
