"""The derivatives sink: niworkflows' DerivativesDataSink with this project's own path patterns.

Importing niworkflows' BIDS interfaces costs seconds (TemplateFlow index), so only the workflow
factory that places sinks imports this module.
"""

import os
import shutil
import tempfile
from pathlib import Path

from nipype.interfaces.base import isdefined
from niworkflows.interfaces.bids import DerivativesDataSink as _NiworkflowsSink

from bids_qsm.data import load_json


class DerivativesDataSink(_NiworkflowsSink):
    """Write a derivative at the BIDS-Derivatives root, named after the source run.

    The stock sink nests outputs under `niworkflows/`, rejects QSM suffixes such as `Chimap`, and
    carries `echo-`/`part-` over from the source file; ours writes at the root, knows our
    suffixes, and drops those entities. The stock sink also writes in place, so a run killed
    while writing leaves a truncated file; ours writes each file into a hidden staging folder
    of the same file system and moves it into place (`os.replace`, atomic), so a killed run
    leaves the previous file or none.
    """

    out_path_base = ""
    _file_patterns = tuple(load_json("derivatives.json")["default_path_patterns"])

    def __init__(self, **inputs):
        inputs.setdefault("dismiss_entities", ("echo", "part", "mt", "flip", "inv"))
        super().__init__(**inputs)

    def _run_interface(self, runtime):
        given = self.inputs.base_directory
        root = Path(given if isdefined(given) else runtime.cwd).absolute()
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".bids_qsm-staging-", dir=root))
        self.inputs.base_directory = str(staging)
        try:
            runtime = super()._run_interface(runtime)
            for key in ("out_file", "out_meta"):
                if key in self._results:
                    self._results[key] = _move_into(self._results[key], staging, root)
        finally:
            self.inputs.base_directory = given
            shutil.rmtree(staging, ignore_errors=True)
        return runtime


def _move_into(paths, staging, root):
    """Move files written under `staging` to the same place under `root`; the new paths."""
    moved = []
    for path in [paths] if isinstance(paths, str) else paths:
        final = root / Path(path).relative_to(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        moved.append(str(final))
    return moved[0] if isinstance(paths, str) else moved
