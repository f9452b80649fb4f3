"""The package's version, in a module of its own: what recipes, reports, checkpoints and
``--version`` state, importable from anywhere in the package without importing the
package's top (``snows_hf/__init__.py``).

Example:
    >>> from snows_hf.version import __version__
    >>> __version__.count(".")
    2
"""

__version__ = "0.1.0"
