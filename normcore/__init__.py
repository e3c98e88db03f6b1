"""normcore: normative modelling of brain-imaging measures with one conditional diffusion model.

The public API is small: read a table, describe its columns with a Schema, fit a
NormativeModel, then score people (centiles, z) and draw centile charts.
"""

from normcore.data import read_table
from normcore.errors import BundleError, DataError, NotFittedError
from normcore.model import NormativeModel, __version__
from normcore.schema import Schema

__all__ = [
    "BundleError",
    "DataError",
    "NormativeModel",
    "NotFittedError",
    "Schema",
    "read_table",
    "__version__",
]
