"""The derivatives sink: niworkflows' DerivativesDataSink with this project's own path patterns.

Importing niworkflows' BIDS interfaces costs seconds (TemplateFlow index), so only the workflow
factory that places sinks imports this module.
"""

from niworkflows.interfaces.bids import DerivativesDataSink as _NiworkflowsSink

from bids_qsm.data import load_json


class DerivativesDataSink(_NiworkflowsSink):
    """Write a derivative at the BIDS-Derivatives root, named after the source run.

    The stock sink nests outputs under `niworkflows/`, rejects QSM suffixes such as `Chimap`, and
    carries `echo-`/`part-` over from the source file; ours writes at the root, knows our
    suffixes, and drops those entities.
    """

    out_path_base = ""
    _file_patterns = tuple(load_json("derivatives.json")["default_path_patterns"])

    def __init__(self, **inputs):
        inputs.setdefault("dismiss_entities", ("echo", "part", "mt", "flip", "inv"))
        super().__init__(**inputs)
