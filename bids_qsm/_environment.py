"""Defaults for the caches and telemetry of our dependencies, set before any of them is imported.

Numba, matplotlib and TemplateFlow write caches under the home directory unless told otherwise,
which fails in read-only containers and clutters shared HPC homes; Nipype phones home unless
told not to. Each default yields to a value the user already exported.
"""

import os
import tempfile
from pathlib import Path


def cache_root():
    """Folder for our dependencies' caches: $BIDS_QSM_CACHE, else a per-user temporary folder."""
    root = os.environ.get("BIDS_QSM_CACHE")
    if root:
        return Path(root)
    return Path(tempfile.gettempdir()) / f"bids_qsm-cache-{os.getuid()}"


def set_environment_defaults():
    """Point numba, matplotlib and TemplateFlow caches away from $HOME; silence Nipype telemetry."""
    root = cache_root()
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("NUMBA_CACHE_DIR", str(root / "numba"))
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    os.environ.setdefault("TEMPLATEFLOW_HOME", str(root / "templateflow"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Nipype's batch plugins read LOGNAME, which minimal containers do not set.
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "bids_qsm"))
