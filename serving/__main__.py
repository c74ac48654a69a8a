"""``python -m serving``: start the clazzify model server (see ``--help``)."""

import sys

from clazzify.serving.server import main

if __name__ == "__main__":
    sys.exit(main(prog_name="python -m serving"))
