"""mlplatform: the shared platform layer of mlsuite.

Configuration (``config``), the error tree (``errors``), Redis connections (``redisdb``),
the Feast adapter (``features``), A/B assignment (``assignment``), the model registry
(``registry``), monitoring (``metrics``), HTTP conventions (``http``), serving
(``serving``), simulated data (``simulate``) and the ``mlsuite`` command line (``cli``).
Apps build on it; it never imports an app.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
