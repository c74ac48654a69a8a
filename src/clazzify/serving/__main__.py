"""``python -m clazzify.serving``: the model server, as the container image runs it."""

import sys

from clazzify.serving.server import main

if __name__ == "__main__":
    sys.exit(main(prog_name="python -m clazzify.serving"))
