"""clazzify: sort photos into content classes.

The package holds the logic of every step as plain typed functions; the KFP
components, pipeline, model server and workers are thin entry points on top.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clazzify")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

DEMO_CLASSES = ("ambiance", "food", "human", "menu")
