"""``python -m clazzify.cli``: the same as the ``clazzify`` command."""

from clazzify.cli import main

if __name__ == "__main__":
    main()
