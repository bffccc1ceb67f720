"""The msde training package.

``__version__`` is the project's version from pyproject.toml (the installed package's
metadata): the default model, its archive and the image all carry it, so one number names
a release (tests/deploy/test_version.py).
"""

from importlib.metadata import version

__version__ = version("msde")
