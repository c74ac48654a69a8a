"""The model server's entry point: ``python -m serving`` from a checkout, and the Dockerfile.

The server itself lives in :mod:`clazzify.serving` (``python -m clazzify.serving`` and
``clazzify serve`` start the same one).
"""
