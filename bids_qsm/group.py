"""Group level: gather every run's region table into one long table, a figure and a QC table.

`bids_qsm BIDS OUT group` reads what the participant level left in OUT:
`sub-<l>[/ses-<l>]/anat/<ents>_desc-roistats_Chimap.tsv` (regions), `<ents>_Chimap.nii.gz`
(+ `.json`) and `<ents>_desc-brain_mask.nii.gz`, and writes under OUT/group/:

- `desc-roistats_Chimap.tsv`: long format, one row per subject, session, acquisition, run and
  label: participant_id, session_id, acq, run ("n/a" when absent), then the per-run columns,
  copied as written (so the values are those of the per-run tables);
- `desc-roistats_Chimap.svg`: each structure's mean chi (ppm) across runs, box and points;
- `desc-qc_Chimap.tsv`: per run, the mask volume (mm^3), the fraction of mask voxels with
  |chi| > `extreme_ppm` (streaks and failed inversions raise it; veins alone stay well under 1 %),
  the sidecar's `Warnings`, and an `outlier` flag from robust z-scores (median and MAD over runs)
  of the mask volume, the extreme fraction and each structure's mean, each with a floor on its
  spread (`SPREAD_FLOORS`) so that runs of one protocol, a few ppb apart, are not flagged;
- `desc-missing_subjects.tsv`: expected subjects without a region table, and why;
- `desc-foci_Chimap.tsv`, `desc-lesions_Chimap.tsv`, `desc-veins_Chimap.tsv`: the clinical
  read-outs' per-run tables, long format like the region table (with their column sidecars),
  where any run has one.
Missing subjects and runs are reported, never fatal.
"""

import csv
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_qsm.qsm.roi import ROI_COLUMNS

logger = logging.getLogger(__name__)

ID_COLUMNS = ("participant_id", "session_id", "acq", "run")
QC_COLUMNS = (
    *ID_COLUMNS,
    "mask_volume_mm3",
    "extreme_fraction",
    "warnings",
    "outlier",
    "outlier_reasons",
)
TABLE_SUFFIX = "_desc-roistats_Chimap.tsv"
READOUTS = ("foci", "lesions", "veins")  # per-run read-out tables gathered like the regions
# The least spread (robust standard deviation) a QC metric is scored against. Runs of one protocol
# agree better than a person would ever call an outlier (region means within a few ppb), and a
# MAD over such values is near zero, which made every ppb a huge z-score. The floors are
# differences that matter: 0.01 ppm in a region mean (about the scan-rescan spread of deep grey
# matter QSM), 10 % of the median mask volume (the spread of adult brain volumes), and 0.5 % of
# the mask beyond the extreme threshold.
SPREAD_FLOORS = {"region_mean_ppm": 0.01, "mask_volume_relative": 0.10, "extreme_fraction": 0.005}
_ENTITY = re.compile(r"(?:^|_)(sub|ses|acq|rec|run)-([a-zA-Z0-9]+)")


@dataclass
class GroupResult:
    """What the group level wrote and found."""

    table: Path | None  # None when no run had a region table
    figure: Path | None
    qc: Path
    missing_subjects: list = field(default_factory=list)  # "sub-<l>" without a region table
    outliers: list = field(default_factory=list)  # run names (<ents>) flagged in the QC table
    n_runs: int = 0
    readouts: dict = field(default_factory=dict)  # "foci" | "lesions" | "veins" -> group table


def bids_subjects(bids_dir, participant_label=None):
    """Subjects ("sub-<l>") of a raw BIDS dataset: participants.tsv, else its sub-* folders.

    participant_label: labels (with or without "sub-") to restrict to, as on the command line.
    """
    root = Path(bids_dir)
    subjects = []
    participants = root / "participants.tsv"
    if participants.is_file():
        with open(participants, newline="", encoding="utf-8") as f:
            subjects = [row["participant_id"] for row in csv.DictReader(f, delimiter="\t")
                        if row.get("participant_id")]  # fmt: skip
    if not subjects:
        subjects = [p.name for p in root.glob("sub-*") if p.is_dir()]
    subjects = sorted({s if s.startswith("sub-") else f"sub-{s}" for s in subjects})
    if participant_label:
        wanted = {f"sub-{str(label).removeprefix('sub-')}" for label in participant_label}
        subjects = [s for s in subjects if s in wanted]
    return subjects


def run_group(output_dir, *, expected_subjects=None, extreme_ppm=0.5, outlier_z=3.5):
    """Write the group tables and figure under OUTPUT_DIR/group; returns a `GroupResult`.

    expected_subjects: "sub-<l>" (or bare labels) that should have outputs, e.g. from
    `bids_subjects(bids_dir)`; those without a region table are listed, not fatal.
    extreme_ppm: |chi| (ppm) above which a mask voxel counts as extreme; outlier_z: robust
    z-score beyond which a run is flagged (needs 3 runs or more): (x - median) / s with s the
    larger of 1.4826 MAD and the metric's floor in `SPREAD_FLOORS`.
    """
    out = Path(output_dir)
    group_dir = out / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    tables = _region_tables(out)
    runs = sorted({*tables, *_chimaps(out)})

    long_rows, means = [], {}
    for prefix in runs:
        if prefix not in tables:
            continue
        ids = _ids(prefix.name)
        for row in _read_tsv(tables[prefix]):
            long_rows.append({**ids, **{c: row.get(c, "n/a") for c in ROI_COLUMNS}})
            means.setdefault(prefix, {})[(row["index"], row["name"])] = _number(row.get("mean"))

    table = figure = None
    if long_rows:
        table = _write_tsv(group_dir / "desc-roistats_Chimap.tsv", (*ID_COLUMNS, *ROI_COLUMNS),
                           long_rows)  # fmt: skip
        _write_json(
            group_dir / "desc-roistats_Chimap.json",
            {"Description": "per-run region statistics of Chimap, long format", "Units": "ppm"},
        )
        figure = _plot(group_dir / "desc-roistats_Chimap.svg", means)
    else:
        logger.warning("no *%s in %s: no group region table", TABLE_SUFFIX, out)

    qc_rows = [_qc_row(prefix, extreme_ppm) for prefix in runs]
    outliers = _flag_outliers(runs, qc_rows, means, outlier_z)
    qc = _write_tsv(group_dir / "desc-qc_Chimap.tsv", QC_COLUMNS, qc_rows)
    _write_json(
        group_dir / "desc-qc_Chimap.json",
        {
            "mask_volume_mm3": {"Description": "brain mask volume", "Units": "mm^3"},
            "extreme_fraction": {
                "Description": f"fraction of mask voxels with |chi| > {extreme_ppm} ppm"
            },
            "outlier": {
                "Description": f"a robust z-score beyond {outlier_z}: (x - median) / s over runs, "
                "s the larger of 1.4826 MAD and the metric's floor (SpreadFloors)"
            },
            "ExtremeThreshold": extreme_ppm,
            "OutlierZ": outlier_z,
            "SpreadFloors": {
                "region_mean_ppm": SPREAD_FLOORS["region_mean_ppm"],
                "mask_volume_relative_to_median": SPREAD_FLOORS["mask_volume_relative"],
                "extreme_fraction": SPREAD_FLOORS["extreme_fraction"],
            },
        },
    )

    readouts = {}
    for readout in READOUTS:
        gathered = _gather_readout(out, group_dir, readout)
        if gathered is not None:
            readouts[readout] = gathered

    have = {_ids(prefix.name)["participant_id"] for prefix in tables}
    with_maps = {_ids(prefix.name)["participant_id"] for prefix in runs}
    missing = []
    for subject in sorted(
        {s if s.startswith("sub-") else f"sub-{s}" for s in expected_subjects or ()}
    ):
        if subject not in have:
            reason = "no region table (no segmentation?)" if subject in with_maps else "no outputs"
            missing.append({"participant_id": subject, "reason": reason})
            logger.warning("%s: %s in %s", subject, reason, out)
    _write_tsv(group_dir / "desc-missing_subjects.tsv", ("participant_id", "reason"), missing)
    return GroupResult(
        table=table,
        figure=figure,
        qc=qc,
        missing_subjects=[m["participant_id"] for m in missing],
        outliers=outliers,
        n_runs=len(runs),
        readouts=readouts,
    )


def _gather_readout(out, group_dir, readout):
    """group/desc-<readout>_Chimap.tsv: every run's read-out table, long format (ID_COLUMNS
    first, then the per-run columns as written), with the first run's column descriptions;
    None when no run has one."""
    suffix = f"_desc-{readout}_Chimap.tsv"
    found = sorted([*out.glob(f"sub-*/anat/*{suffix}"), *out.glob(f"sub-*/ses-*/anat/*{suffix}")])
    if not found:
        return None
    columns, rows = [], []
    for path in found:
        for row in _read_tsv(path):
            columns += [c for c in row if c not in columns]
            rows.append({**_ids(path.name), **row})
    table = _write_tsv(group_dir / f"desc-{readout}_Chimap.tsv", (*ID_COLUMNS, *columns), rows)
    try:
        meta = json.loads(found[0].with_suffix(".json").read_text())
        meta = {c: meta[c] for c in columns if c in meta}
    except (OSError, ValueError):
        meta = {}
    _write_json(table.with_suffix(".json"), meta)
    return table


def _region_tables(out):
    """{<ents> path prefix: its region table} under sub-*/[ses-*/]anat/."""
    found = [
        *out.glob(f"sub-*/anat/*{TABLE_SUFFIX}"),
        *out.glob(f"sub-*/ses-*/anat/*{TABLE_SUFFIX}"),
    ]
    return {p.with_name(p.name[: -len(TABLE_SUFFIX)]): p for p in found}


def _chimaps(out):
    """<ents> path prefixes of the final maps (`<ents>_Chimap.nii.gz`, no desc-)."""
    found = [*out.glob("sub-*/anat/*_Chimap.nii.gz"), *out.glob("sub-*/ses-*/anat/*_Chimap.nii.gz")]
    return [p.with_name(p.name[: -len("_Chimap.nii.gz")]) for p in found if "_desc-" not in p.name]


def _ids(name):
    entities = dict(_ENTITY.findall(name))
    return {
        "participant_id": f"sub-{entities['sub']}",
        "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
        "acq": entities.get("acq", "n/a"),
        "run": entities.get("run", "n/a"),
    }


def _qc_row(prefix, extreme_ppm):
    """QC numbers of one run; 'n/a' for what is missing."""
    import nibabel as nb

    row = {**_ids(prefix.name), "mask_volume_mm3": "n/a", "extreme_fraction": "n/a"}
    warnings = []
    mask_path = prefix.with_name(prefix.name + "_desc-brain_mask.nii.gz")
    chi_path = prefix.with_name(prefix.name + "_Chimap.nii.gz")
    mask = None
    if mask_path.is_file():
        img = nb.load(mask_path)
        mask = np.asanyarray(img.dataobj) > 0
        voxel_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
        row["mask_volume_mm3"] = f"{mask.sum() * voxel_mm3:.1f}"
    else:
        warnings.append("no brain mask")
    if chi_path.is_file():
        chi = np.asanyarray(nb.load(chi_path).dataobj, dtype=np.float32)
        inside = mask if mask is not None and mask.shape == chi.shape else chi != 0
        if inside.any():
            row["extreme_fraction"] = f"{np.mean(np.abs(chi[inside]) > extreme_ppm):.6f}"
        warnings.extend(_sidecar_warnings(chi_path.with_name(prefix.name + "_Chimap.json")))
    else:
        warnings.append("no Chimap")
    row["warnings"] = "; ".join(warnings) or "n/a"
    return row


def _sidecar_warnings(path):
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text()).get("Warnings", [])
    except (OSError, ValueError):
        return [f"unreadable sidecar {path.name}"]
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _robust_z(values, *, floor=0.0, relative_floor=0.0):
    """Robust z-scores of the finite values: (x - median) / s, NaN elsewhere.

    s = max(1.4826 MAD, floor, relative_floor * |median|): the MAD scaled to a normal standard
    deviation, never below the spread that matters for the quantity. NaN with fewer than 3
    values, or where s is 0.
    """
    x = np.asarray(values, float)
    z = np.full(x.shape, np.nan)
    finite = np.isfinite(x)
    if finite.sum() < 3:
        return z
    median = np.median(x[finite])
    deviation = x[finite] - median
    spread = max(1.4826 * np.median(np.abs(deviation)), floor, relative_floor * abs(median))
    if spread > 0:
        z[finite] = deviation / spread
    return z


def _flag_outliers(runs, qc_rows, means, outlier_z):
    """Fill `outlier` and `outlier_reasons` in the QC rows; the flagged runs' names."""
    reasons = {i: [] for i in range(len(runs))}
    metrics = {
        "mask_volume_mm3": (
            [_number(row["mask_volume_mm3"]) for row in qc_rows],
            {"relative_floor": SPREAD_FLOORS["mask_volume_relative"]},
        ),
        "extreme_fraction": (
            [_number(row["extreme_fraction"]) for row in qc_rows],
            {"floor": SPREAD_FLOORS["extreme_fraction"]},
        ),
    }
    structures = sorted({key for per_run in means.values() for key in per_run}, key=_label_key)
    for index, name in structures:
        metrics[f"{name} mean"] = (
            [means.get(p, {}).get((index, name), np.nan) for p in runs],
            {"floor": SPREAD_FLOORS["region_mean_ppm"]},
        )
    for metric, (values, floors) in metrics.items():
        for i, z in enumerate(_robust_z(values, **floors)):
            if np.isfinite(z) and abs(z) > outlier_z:
                reasons[i].append(f"{metric} z={z:+.1f}")
    for i, row in enumerate(qc_rows):
        row["outlier"] = "True" if reasons[i] else "False"
        row["outlier_reasons"] = "; ".join(reasons[i]) or "n/a"
    return [runs[i].name for i in range(len(runs)) if reasons[i]]


def _plot(path, means):
    """Box and points of each structure's mean chi (ppm) across runs, as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = sorted({key for per_run in means.values() for key in per_run}, key=_label_key)
    data = [
        np.array([per_run[key] for per_run in means.values() if key in per_run], float)
        for key in structures
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(structures) + 2), 4.5))
    ax.boxplot([d[np.isfinite(d)] for d in data], showfliers=False)
    jitter = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.plot(i + jitter.uniform(-0.15, 0.15, d.size), d, "o", ms=3, alpha=0.6, color="C1")
    ax.set_xticks(range(1, len(structures) + 1), [name for _, name in structures], rotation=90)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_ylabel("mean susceptibility (ppm)")
    ax.set_title(f"Region means across {len(means)} run(s)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _label_key(key):
    index, name = key
    try:
        return (int(index), name)
    except ValueError:
        return (1 << 30, name)


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return np.nan


def _read_tsv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _write_tsv(path, columns, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(row.get(c, "n/a")) for c in columns) + "\n")
    return Path(path)


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
