"""The derivatives dataset's own files: dataset_description.json, .bidsignore, settings."""

import fcntl
import json
import os
import tempfile
from pathlib import Path

from bids_qsm import __version__

# Outputs that BIDS has no name for yet, and our logs.
BIDSIGNORE = (
    "logs", "figures", "group", "*.html", "*_fieldmap.*", "*_swi.*", "*_minIP.*",
    "*_desc-roistats_Chimap.*", "*_xfm.*", "*_desc-foci_Chimap.*", "*_desc-lesions_Chimap.*",
    "*_desc-veins_Chimap.*",
)  # fmt:skip


class OutputDirError(RuntimeError):
    """The output folder exists but is not a derivatives dataset we may write into."""


def init_derivatives(output_dir, *, bids_dir):
    """Create (or check) the BIDS-Derivatives root and describe how it was generated.

    Safe when several participant runs start at once into one folder: the description is
    written only where there is none (the first run's stays; each is complete when it
    appears), and .bidsignore lines are added under a file lock.
    """
    output_dir = Path(output_dir)
    description = output_dir / "dataset_description.json"
    if description.exists():
        try:
            existing = json.loads(description.read_text())
        except ValueError:
            raise OutputDirError(f"{description}: not valid JSON") from None
        if existing.get("DatasetType") != "derivative":
            raise OutputDirError(f"{description}: not a derivatives dataset; refusing to write")
        _add_bidsignore(output_dir)
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    source_name = _dataset_name(bids_dir)
    generated_by = {"Name": "bids_qsm", "Version": __version__}
    container = _container()
    if container:
        generated_by["Container"] = container
    _write_json_if_absent(
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
    _add_bidsignore(output_dir)
    return output_dir


def _add_bidsignore(output_dir):
    """Add our lines to .bidsignore where missing, under a lock (runs may start together)."""
    with (output_dir / ".bidsignore").open("a+") as ignore:
        fcntl.flock(ignore, fcntl.LOCK_EX)
        ignore.seek(0)
        present = set(ignore.read().splitlines())
        missing = [line for line in BIDSIGNORE if line not in present]
        ignore.write("".join(f"{line}\n" for line in missing))


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
    _write_atomic(path, text)
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


def _write_atomic(path, text):
    """Write under a temporary name of this process, then move into place: readers see the old
    file or the new one, never a part, whoever else writes it at the same time."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as tmp:  # fmt:skip
        tmp.write(text)
    os.replace(tmp.name, path)


def _write_json_if_absent(path, data):
    """Create `path` holding `data` unless it exists (then another run made it first)."""
    text = json.dumps(data, indent=2) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as tmp:  # fmt:skip
        tmp.write(text)
    try:
        os.link(tmp.name, path)  # atomic, and fails where the file exists
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: exclusive create instead
        try:
            with open(path, "x") as f:
                f.write(text)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp.name)
