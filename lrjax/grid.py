"""``python -m lrjax.grid``: the command line lives in :mod:`lrjax.cli.grid`."""

from lrjax.cli.grid import main

if __name__ == "__main__":
    raise SystemExit(main())
