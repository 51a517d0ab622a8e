"""The derivatives dataset's own files: dataset_description.json, .bidsignore, settings."""

import json
import os
from pathlib import Path

from bids_qsm import __version__

# Outputs that BIDS has no name for yet, and our logs.
BIDSIGNORE = (
    "logs", "figures", "group", "*.html", "*_fieldmap.*", "*_swi.*", "*_minIP.*",
    "*_desc-roistats_Chimap.*", "*_xfm.*",
)  # fmt:skip


class OutputDirError(RuntimeError):
    """The output folder exists but is not a derivatives dataset we may write into."""


def init_derivatives(output_dir, *, bids_dir):
    """Create (or check) the BIDS-Derivatives root and describe how it was generated."""
    output_dir = Path(output_dir)
    description = output_dir / "dataset_description.json"
    if description.exists():
        try:
            existing = json.loads(description.read_text())
        except ValueError:
            raise OutputDirError(f"{description}: not valid JSON") from None
        if existing.get("DatasetType") != "derivative":
            raise OutputDirError(f"{description}: not a derivatives dataset; refusing to write")
    output_dir.mkdir(parents=True, exist_ok=True)
    source_name = _dataset_name(bids_dir)
    generated_by = {"Name": "bids_qsm", "Version": __version__}
    container = _container()
    if container:
        generated_by["Container"] = container
    _write_json(
        description,
        {
            "Name": f"bids_qsm derivatives of {source_name}",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by],
            "SourceDatasets": [{"URL": Path(bids_dir).absolute().as_uri()}],
            "DatasetLinks": {"raw": Path(bids_dir).absolute().as_uri()},
        },
    )
    ignore = output_dir / ".bidsignore"
    present = set(ignore.read_text().splitlines()) if ignore.exists() else set()
    missing = [line for line in BIDSIGNORE if line not in present]
    if missing:
        with ignore.open("a") as f:
            f.write("".join(f"{line}\n" for line in missing))
    return output_dir


def write_citation(output_dir, *, methods_text, methods):
    """logs/CITATION.md: the methods paragraph of this run and the references of its methods.

    methods: stage section of citations.json -> the method used (e.g. {"inversion": "tgv"}).
    """
    from bids_qsm.data import load_json

    cites = load_json("citations.json")
    references = sorted(
        {cites[stage][name][1] for stage, name in methods.items() if cites[stage][name][1]}
    )
    path = Path(output_dir) / "logs" / "CITATION.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = methods_text.strip() + "\n\n### References\n\n"
    text += "".join(f"- {reference}\n" for reference in references)
    path.write_text(text)
    return path


def _dataset_name(bids_dir):
    try:
        return json.loads((Path(bids_dir) / "dataset_description.json").read_text())["Name"]
    except (OSError, ValueError, KeyError):
        return Path(bids_dir).name


def _container():
    """What container we run in, if any (Singularity/Apptainer set these variables)."""
    for variable, kind in (("SINGULARITY_NAME", "singularity"), ("APPTAINER_NAME", "apptainer")):
        if os.environ.get(variable):
            return {"Type": kind, "Tag": os.environ[variable]}
    if Path("/.dockerenv").exists():
        return {"Type": "docker"}
    return None


def _write_json(path, data):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
