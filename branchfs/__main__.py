"""``python -m branchfs``: the ``branchfs`` command line (see :mod:`branchfs.entry`)."""

from .entry import main

main()
