"""Defaults for the caches and telemetry of our dependencies, set before any of them is imported.

Numba, matplotlib and TemplateFlow write caches under the home directory unless told otherwise,
which fails in read-only containers and clutters shared HPC homes; Nipype phones home unless
told not to. Each default yields to a value the user already exported.
"""

import json
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
    if "TEMPLATEFLOW_HOME" not in os.environ:
        os.environ["TEMPLATEFLOW_HOME"] = str(_empty_templateflow_home(root / "templateflow"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Nipype's batch plugins read LOGNAME, which minimal containers do not set.
    os.environ.setdefault("LOGNAME", os.environ.get("USER", "bids_qsm"))


def _empty_templateflow_home(path):
    """A TemplateFlow home that holds no templates, which we never use.

    niworkflows indexes TemplateFlow when its BIDS interfaces are imported; an empty home would be
    filled with a skeleton of thousands of files that takes 5-30 s to index in every process. A
    home that only describes itself is taken as installed and indexes in milliseconds.
    """
    description = path / "dataset_description.json"
    if not description.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
            description.write_text(
                json.dumps(
                    {
                        "Name": "TemplateFlow home of bids_qsm (no templates)",
                        "BIDSVersion": "1.10.0",
                    }
                )
            )
        except OSError:  # read-only: niworkflows will say so if it needs the folder
            pass
    return path
