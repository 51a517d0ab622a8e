"""A subject's report, assembled after a run from what it left in the output and work folders.

Figures come from OUTPUT_DIR/sub-<label>/figures/, parameters and warnings from the sidecars of
the subject's Chimap and R2starmap, methods from OUTPUT_DIR/logs/CITATION.md and, when the work
folder is given, per-stage wall times from Nipype's result files. Nothing here reruns or reads
an image: a report can be (re)made for any finished or half-finished output folder.
"""

import json
import logging
import re
from pathlib import Path

from bids_qsm.reports.html import write_report

logger = logging.getLogger(__name__)

# Figure key (the desc- entity) -> (title, caption), in the order the report shows them.
FIGURES = {
    "mask": (
        "Magnitude with the brain mask outline",
        "First-echo magnitude with the outline of the brain mask (red), cut through the "
        "mask's centroid.",
    ),
    "totalfield": (
        "Total field (Hz)",
        "Field fitted over the echoes inside the brain mask, before background removal, on a "
        "scale symmetric about zero.",
    ),
    "localfield": (
        "Local field (ppm)",
        "Field left after background removal, inside the eroded mask, on a scale symmetric "
        "about zero.",
    ),
    "chimap": (
        "Susceptibility (ppm, symmetric scale)",
        "Referenced susceptibility map: paramagnetic tissue (veins, iron-rich nuclei) bright, "
        "diamagnetic tissue dark, around a grey zero.",
    ),
    "r2star": (
        "R2* (1/s)",
        "Transverse relaxation rate fitted from the echo magnitudes, 1st to 99th percentile.",
    ),
    "swi": (
        "SWI and minimum intensity projection",
        "Susceptibility-weighted image (top) and its minimum intensity projection (bottom) at "
        "the same slices.",
    ),
    "findings": (
        "Foci and lesions on the Chimap beside the SWI",
        "Axial slices through the read-outs' findings: on the Chimap, microbleed-like "
        "(paramagnetic) foci outlined in red, calcification-like (diamagnetic) foci in blue, "
        "lesions with a paramagnetic rim in yellow and others in green; the SWI below at the "
        "same slices. Rule-based, for research; no diagnostic claim.",
    ),
    "veins": (
        "Vein mask (projection)",
        "Maximum intensity projections of the Chimap with the vein mask (red) along the third "
        "and the first voxel axis; the venous susceptibility and oxygen saturation are in "
        "desc-veins_Chimap.tsv.",
    ),
}
# Sidecar keys shown as a run's parameters: every stage's settings, then the acquisition.
STAGES = (
    "PhaseScaling",
    "Masking",
    "Unwrapping",
    "EchoCombination",
    "Relaxometry",
    "BackgroundRemoval",
    "DipoleInversion",
    "Referencing",
)
ACQUISITION = ("EchoTime", "MagneticFieldStrength", "B0Direction")
# Nodes of a run's workflow whose wall time the report lists, in processing order.
NODES = (
    "phase_units",
    "mask",
    "unwrap",
    "combine",
    "relaxometry",
    "background",
    "invert",
    "reference",
    "swi",
    "foci",
    "veins",
    "lesions",
    "figures",
)
_ENTITIES = ("ses", "acq", "rec", "run")  # after sub-, in BIDS order
_LABEL = "[a-zA-Z0-9]+"


def generate_report(output_dir, subject, *, work_dir=None, problems=()):
    """Write OUTPUT_DIR/sub-<subject>.html from a finished (or failed) run; return its path.

    output_dir: the BIDS-Derivatives root; subject: the label, with or without "sub-";
    work_dir: Nipype's work folder of the run (the -w option), for per-stage timings, or None;
    problems: one-line messages about this subject from elsewhere (e.g. skipped inputs), shown
    among the warnings. The report lists an error when no Chimap sidecar exists for the subject.
    """
    output_dir = Path(output_dir)
    subject = _strip(subject)
    warnings = []
    chimaps = _sidecars(output_dir, subject, "Chimap", warnings)
    r2stars = _sidecars(output_dir, subject, "R2starmap", warnings)
    figures = _figure_files(output_dir, subject)
    timing_dirs = _run_workflows(work_dir, subject) if work_dir is not None else {}
    runs = sorted(
        {prefix for prefix, _, _ in figures} | chimaps.keys() | r2stars.keys() | timing_dirs.keys()
    )
    several = len(runs) > 1

    for prefix in runs:
        for sidecar in (chimaps.get(prefix), r2stars.get(prefix)):
            warnings += [f"{prefix}: {w}" for w in _processing_warnings(sidecar)]
    warnings += [str(p) for p in problems]

    parameters = {
        prefix: {k: sidecar[k] for k in (*STAGES, *ACQUISITION) if k in sidecar}
        for prefix, sidecar in sorted(chimaps.items())
        if sidecar is not None
    }
    timings = {}
    for prefix, run_dir in sorted(timing_dirs.items()):
        for node, seconds in _node_durations(run_dir):
            timings[f"{prefix}: {node}" if several else node] = seconds
    errors = [] if chimaps else [f"no susceptibility map was written for sub-{subject}"]
    return write_report(
        output_dir / f"sub-{subject}.html",
        subject=subject,
        figures=[_figure(prefix, key, path, several=several) for prefix, key, path in figures],
        methods=_methods(output_dir),
        parameters=parameters,
        timings=timings,
        warnings=list(dict.fromkeys(warnings)),
        errors=errors,
    )


def generate_reports(output_dir, subjects, *, work_dir=None, problems_by_subject=None):
    """The report of every subject in `subjects`; return the paths written.

    problems_by_subject: subject label -> one-line messages for that subject. A report that
    cannot be written (a full or read-only disk) is logged and skipped, so that one subject's
    failure does not cost the others their reports.
    """
    problems_by_subject = {_strip(s): p for s, p in (problems_by_subject or {}).items()}
    written = []
    for subject in dict.fromkeys(_strip(s) for s in subjects):
        try:
            path = generate_report(
                output_dir,
                subject,
                work_dir=work_dir,
                problems=problems_by_subject.get(subject, ()),
            )
        except OSError as error:
            logger.error("report of sub-%s could not be written: %s", subject, error)
            continue
        written.append(path)
    return written


def _strip(subject):
    subject = str(subject)
    return subject[4:] if subject.startswith("sub-") else subject


def _prefix_pattern(subject, dash="-"):
    """Regular expression of the subject's run prefixes; `dash` joins entity and label."""
    optional = "".join(f"(?:_{entity}{dash}{_LABEL})?" for entity in _ENTITIES)
    return f"sub{dash}{re.escape(subject)}{optional}"


def _figure_files(output_dir, subject):
    """(run prefix, key, path relative to OUTPUT_DIR) of the subject's figures, in report order."""
    folder = output_dir / f"sub-{subject}" / "figures"
    pattern = re.compile(
        rf"(?P<prefix>{_prefix_pattern(subject)})_desc-(?P<key>{_LABEL})_qsm\.(?:svg|png)"
    )
    found = []
    for path in folder.glob("*") if folder.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.append((match["prefix"], match["key"], f"sub-{subject}/figures/{path.name}"))
    known = list(FIGURES)

    def order(item):
        prefix, key, path = item
        rank = (0, known.index(key), "") if key in FIGURES else (1, 0, key)
        return prefix, rank, path

    return sorted(found, key=order)


def _figure(prefix, key, path, *, several):
    title, caption = FIGURES.get(key, (key, ""))
    return (f"{prefix}: {title}" if several else title), path, caption


def _sidecars(output_dir, subject, suffix, warnings):
    """Run prefix -> the subject's `suffix` sidecar as a dict (None where it is unreadable)."""
    pattern = re.compile(rf"(?P<prefix>{_prefix_pattern(subject)})_{suffix}\.json")
    root = output_dir / f"sub-{subject}"
    paths = [*root.glob(f"anat/*_{suffix}.json"), *root.glob(f"ses-*/anat/*_{suffix}.json")]
    sidecars = {}
    for path in sorted(paths):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            data = error
        if not isinstance(data, dict):
            message = f"sidecar {path.relative_to(output_dir)} could not be read"
            logger.warning("%s: %s", message, data)
            warnings.append(message)
            data = None
        sidecars[match["prefix"]] = data
    return sidecars


def _processing_warnings(sidecar):
    if not sidecar:
        return []
    found = sidecar.get("ProcessingWarnings", [])
    return [found] if isinstance(found, str) else [str(w) for w in found]


def _methods(output_dir):
    path = output_dir / "logs" / "CITATION.md"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "No methods text: logs/CITATION.md is missing from the output folder."
    # The page shows plain paragraphs; Markdown heading marks would show as literal '#'.
    return re.sub(r"^#+[ \t]*", "", text, flags=re.MULTILINE)


def _run_workflows(work_dir, subject):
    """Run prefix -> folder of that run's workflow under Nipype's work folder.

    Workflow names are the run prefixes with '-' turned into '_'; BIDS labels are alphanumeric,
    so the name splits back into entity/label pairs. Runs that failed early are found too.
    """
    folder = Path(work_dir) / "bids_qsm_wf" / f"sub_{subject}_wf"
    pattern = re.compile(f"qsm_{_prefix_pattern(subject, dash='_')}_wf")
    runs = {}
    for path in folder.glob("qsm_*_wf") if folder.is_dir() else ():
        if path.is_dir() and pattern.fullmatch(path.name):
            tokens = path.name[len("qsm_") : -len("_wf")].split("_")
            pairs = zip(tokens[::2], tokens[1::2], strict=True)
            runs["_".join(f"{key}-{label}" for key, label in pairs)] = path
    return runs


def _node_durations(run_dir):
    """(node, seconds) from the result files of a run's nodes; unreadable ones are skipped."""
    from nipype.utils.filemanip import loadpkl

    durations = []
    for node in NODES:
        # the run's stage families are sub-workflows: a node lies one folder down (and two
        # families may each have one of that name, e.g. figures: their times add up)
        found = sorted({*run_dir.glob(f"{node}/result_{node}.pklz"),
                        *run_dir.glob(f"*_wf/{node}/result_{node}.pklz")})  # fmt:skip
        # loadpkl waits (minutes, by Nipype's settings) for a file that does not exist yet.
        seconds = []
        for result_file in found:
            try:
                seconds.append(float(loadpkl(result_file).runtime.duration))
            except Exception as error:  # unpickling can fail in any way (old Nipype, truncated)
                logger.debug("no timing from %s: %s", result_file, error)
        if seconds:
            durations.append((node, sum(seconds)))
    return durations
