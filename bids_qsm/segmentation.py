"""Find a subject's segmentation in `--segmentation-dir` and bring its labels onto the MEGRE grid.

The segmentation dataset is BIDS-Derivatives as FreeSurfer/FastSurfer/SynthSeg pipelines export
it: `sub-<l>[/ses-<l>]/anat/sub-<l>[_ses-<l>][_space-<s>][_desc-<d>]_dseg.nii[.gz]` with a look-up
table of `index` and `name` (`<same name>.tsv`, or `dseg.tsv` / `desc-<d>_dseg.tsv` in its folder
or any parent up to the dataset root). Without a table, FreeSurfer aseg numbering is used only
when declared (`lookup="freesurfer"`) or when the dataset's `GeneratedBy` names a FreeSurfer-family
pipeline. Labels on another grid need the subject's `*_T1w.nii[.gz]` in the same dataset: it is
registered to the first-echo magnitude and the labels follow. A user's brain mask
(`--mask-dir`, `*_desc-brain_mask.nii[.gz]`) is found the same way but must be on the MEGRE
grid. Every problem is a `SegmentationError` whose text is one line naming the file.
"""

import csv
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qsm.qsm.roi import FREESURFER_ASEG, ROI_COLUMNS

logger = logging.getLogger(__name__)

# Pipelines whose segmentations use FreeSurfer aseg numbering (matched in GeneratedBy names).
FREESURFER_FAMILY = ("freesurfer", "fastsurfer", "synthseg", "smriprep", "fmriprep")
# `space-` values meaning the subject's own anatomy (not a template).
NATIVE_SPACES = (None, "T1w", "T2w", "orig", "native", "anat", "individual", "MEGRE")
GRID_TOLERANCE_MM = 1e-3


class SegmentationError(Exception):
    """Bad or missing segmentation input; `str()` is one line naming the file."""

    def __init__(self, path, message):
        super().__init__(path, message)
        self.path, self.message = Path(path), message

    def __str__(self):
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Segmentation:
    """One subject's segmentation and how to bring it onto the MEGRE grid."""

    dseg: Path  # the label image
    names: dict  # {index: name}
    lookup: str  # the look-up table's path, or "FreeSurfer aseg (built in)"
    reference: Path | None  # T1w to register to the magnitude; None: already on the MEGRE grid

    @property
    def needs_registration(self) -> bool:
        return self.reference is not None


def find_segmentation(
    segmentation_dir, *, subject, session=None, target_shape, target_affine, desc=None,
    lookup="auto",
):  # fmt: skip
    """The segmentation of `subject` (and `session`) for a run on the given MEGRE grid.

    subject/session: labels with or without `sub-`/`ses-`; target_shape, target_affine: the
    MEGRE grid (first 3 dimensions, 4x4 voxel-to-mm); desc: keep only `desc-<desc>` files;
    lookup: "auto" (table next to the file, else FreeSurfer numbering if the dataset says it is
    FreeSurfer-made), "freesurfer" (aseg names when no table exists) or a path to a TSV table.
    A session-less segmentation serves every session. Raises SegmentationError.
    """
    root = Path(segmentation_dir)
    subject, session = _strip(subject, "sub-"), _strip(session, "ses-")
    if not root.is_dir():
        raise SegmentationError(root, "segmentation directory does not exist")
    candidates = _candidates(root, subject, session, desc)
    dseg = _choose(root, candidates, target_shape, target_affine)
    _check_sidecar_subject(dseg, subject)
    names, table = _lookup(root, dseg, lookup)
    reference = registration_reference(
        root, dseg, subject, target_shape, target_affine, what="the labels"
    )
    return Segmentation(dseg, names, table, reference)


def registration_reference(root, path, subject, target_shape, target_affine, *, what):
    """None when the image at `path` is on the MEGRE grid, else the subject's T1w beside it that
    it can be registered through; SegmentationError naming `path` when there is none. `what`
    names the image in that message ("the labels")."""
    shape, affine = _header(path)
    if _same_grid(shape, affine, target_shape, target_affine):
        return None
    reference = _reference_t1w(root, path, subject)
    if reference is None:
        raise SegmentationError(
            path,
            f"grid mismatch and no reference T1w: {what} ({'x'.join(map(str, shape))}) are not "
            f"on the MEGRE grid ({'x'.join(map(str, target_shape[:3]))}) and no "
            f"sub-{subject}*_T1w.nii[.gz] in {path.parent} to register",
        )
    return reference


def find_mask(mask_dir, *, subject, session=None, target_shape, target_affine):
    """The user's brain mask of `subject` (and `session`): `*_desc-brain_mask.nii[.gz]` in
    `mask_dir` (a BIDS-Derivatives folder, searched like a segmentation), which must lie on the
    MEGRE grid (target_shape, target_affine as in `find_segmentation`). Raises
    SegmentationError naming the file or folder."""
    root = Path(mask_dir)
    subject, session = _strip(subject, "sub-"), _strip(session, "ses-")
    if not root.is_dir():
        raise SegmentationError(root, "mask directory does not exist")
    candidates = _candidates(root, subject, session, "brain", suffix="mask", what="brain mask")
    mask = _choose(root, candidates, target_shape, target_affine, what="brain masks")
    shape, affine = _header(mask)
    if not _same_grid(shape, affine, target_shape, target_affine):
        raise SegmentationError(
            mask,
            f"the mask ({'x'.join(map(str, shape))}) is not on the MEGRE grid "
            f"({'x'.join(map(str, target_shape[:3]))}, same affine): bring it into the run's space",
        )
    return mask


def labels_on_grid(segmentation, *, magnitude, target_affine, kind="rigid", num_threads=None):
    """(labels on the MEGRE grid, 4x4 world transform or None) for a found `Segmentation`.

    magnitude: the first-echo magnitude (3-D, or 4-D with echo last: echo 1 is used) on the grid
    of `target_affine`. A segmentation on that grid is returned as it is (transform None);
    otherwise its T1w is registered to the magnitude (`register`, mutual information, `kind`
    "rigid" or "affine") and the labels follow by nearest-neighbour majority (`resample_labels`).
    The transform maps MEGRE world points (mm, RAS+) to T1w world points.
    """
    import nibabel as nb

    from bids_qsm.qsm.registration import register, resample_labels

    magnitude = np.asarray(magnitude)
    if magnitude.ndim == 4:
        magnitude = magnitude[..., 0]
    img = nb.load(segmentation.dseg)
    labels = _integer_labels(segmentation.dseg, img)
    if not segmentation.needs_registration:
        return labels, None
    t1w = nb.load(segmentation.reference)
    transform = register(
        magnitude,
        np.asarray(t1w.dataobj, dtype=np.float32),
        fixed_affine=target_affine,
        moving_affine=t1w.affine,
        kind=kind,
        num_threads=num_threads,
    )
    on_grid = resample_labels(
        labels,
        moving_affine=img.affine,
        target_shape=magnitude.shape,
        target_affine=target_affine,
        transform=transform,
    )
    return on_grid, transform


def check_coverage(labels, mask, path, *, minimum=0.5):
    """Fraction of the brain mask carrying a label; SegmentationError below `minimum`.

    A segmentation of another head, or a failed registration, leaves much of the mask unlabelled
    or labels it outside; the check runs after the labels are on the MEGRE grid.
    """
    mask = np.asarray(mask, bool)
    covered = float(np.mean(np.asarray(labels)[mask] != 0)) if mask.any() else 0.0
    if covered < minimum:
        raise SegmentationError(
            path,
            f"labels cover only {covered:.0%} of the brain mask: segmentation of another subject, "
            "or the registration to the magnitude failed",
        )
    return covered


def read_lookup(path):
    """{index: name} from a BIDS `dseg.tsv` (columns `index` and `name`, tab-separated)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise SegmentationError(path, f"cannot read the look-up table ({err})") from None
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise SegmentationError(path, "look-up table needs the columns 'index' and 'name'")
    names = {}
    for row in rows:
        try:
            index = int(row["index"])
        except (TypeError, ValueError):
            raise SegmentationError(path, f"index {row['index']!r} is not an integer") from None
        if index in names:
            raise SegmentationError(path, f"index {index} is listed twice")
        names[index] = (row["name"] or "n/a").strip()
    return names


def write_lookup(path, names):
    """Write {index: name} as a BIDS `dseg.tsv`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("index\tname\n")
        for index in sorted(names):
            f.write(f"{index}\t{names[index]}\n")
    return Path(path)


def write_itk_transform(path, matrix):
    """Save a 4x4 world matrix (RAS+, MEGRE point -> T1w point) as an ITK text transform.

    ITK works in LPS+ and stores the map from fixed (reference) to moving points, which is what
    `antsApplyTransforms -r MEGRE -i T1w-space-image -t this.txt` needs: the BIDS name is
    `<ents>_from-T1w_to-MEGRE_mode-image_xfm.txt`.
    """
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ np.asarray(matrix, float) @ flip
    parameters = " ".join(f"{v:.10g}" for v in (*lps[:3, :3].ravel(), *lps[:3, 3]))
    text = (
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {parameters}\nFixedParameters: 0 0 0\n"
    )
    Path(path).write_text(text)
    return Path(path)


def read_itk_transform(path):
    """The 4x4 RAS+ world matrix of an ITK affine text transform (inverse of the writer)."""
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
    values = np.array(fields["Parameters"].split(), float)
    centre = np.array(fields.get("FixedParameters", "0 0 0").split(), float)
    lps = np.eye(4)
    lps[:3, :3] = values[:9].reshape(3, 3)
    lps[:3, 3] = values[9:12] + centre - lps[:3, :3] @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def write_roi_table(path, rows, *, sidecar=None):
    """Write `roi_statistics` rows as `<ents>_desc-roistats_Chimap.tsv` plus its JSON sidecar.

    Columns are ROI_COLUMNS; chi values (ppm) with 6 significant digits, volumes (mm^3) with 3
    decimals. The sidecar describes the columns and carries `sidecar` (e.g. ErodeVoxels, the
    segmentation's source, the labels kept un-eroded).
    """
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("\t".join(ROI_COLUMNS) + "\n")
        for row in rows:
            f.write("\t".join(_format(column, row[column]) for column in ROI_COLUMNS) + "\n")
    meta = {
        "index": {"Description": "label index in the segmentation"},
        "name": {"Description": "label name from the segmentation's look-up table"},
        "n_voxels": {"Description": "voxels of the label inside the QSM mask"},
        "volume_mm3": {"Description": "n_voxels times the voxel volume", "Units": "mm^3"},
        **{
            c: {"Description": f"{c} of chi over the label", "Units": "ppm"}
            for c in ("mean", "median", "std")
        },  # fmt: skip
        "p25": {"Description": "25th percentile of chi over the label", "Units": "ppm"},
        "p75": {"Description": "75th percentile of chi over the label", "Units": "ppm"},
        **(sidecar or {}),
    }
    sidecar_path = path.with_name(path.name[: -len(".tsv")] + ".json")
    sidecar_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def read_roi_table(path):
    """Rows of a per-run region table as {column: text}, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _format(column, value):
    if column in ("index", "n_voxels"):
        return str(int(value))
    if column == "name":
        return str(value)
    if column == "volume_mm3":
        return f"{value:.3f}"
    return f"{value:.6g}"


_ENTITY = re.compile(r"(?:^|_)(sub|ses|space|desc|run|acq)-([a-zA-Z0-9]+)")


def _entities(path):
    return dict(_ENTITY.findall(Path(path).name))


def _strip(label, prefix):
    if label is None:
        return None
    label = str(label)
    return label[len(prefix) :] if label.startswith(prefix) else label


def _nii_files(root, suffix):
    files = [*root.rglob(f"*_{suffix}.nii.gz"), *root.rglob(f"*_{suffix}.nii")]
    hidden = [p for p in files if any(x.startswith(".") for x in p.relative_to(root).parts)]
    return sorted(set(files) - set(hidden))


def _candidates(root, subject, session, desc, suffix="dseg", what="segmentation"):
    """`suffix` files of this subject (and session) in native space; errors say what exists."""
    files = [p for p in _nii_files(root, suffix) if _entities(p).get("space") in NATIVE_SPACES]
    if not files:
        raise SegmentationError(root, f"no *_{suffix}.nii[.gz] {what} in the subject's space")
    for path in files:
        folder = next((p[4:] for p in path.relative_to(root).parts if p.startswith("sub-")), None)
        named = _entities(path).get("sub")
        if subject in (folder, named) and None not in (folder, named) and folder != named:
            raise SegmentationError(path, f"file is named sub-{named} but lies in sub-{folder}/")
    mine = [p for p in files if _entities(p).get("sub") == subject]
    if not mine:
        others = sorted({f"sub-{_entities(p).get('sub')}" for p in files})
        raise SegmentationError(
            root, f"no {what} for sub-{subject} (wrong subject? found {', '.join(others)})"
        )
    if desc is not None:
        mine = [p for p in mine if _entities(p).get("desc") == desc]
        if not mine:
            raise SegmentationError(root, f"no desc-{desc} {what} for sub-{subject}")
    same_session = [p for p in mine if _entities(p).get("ses") == session]
    if same_session:
        return same_session
    sessionless = [p for p in mine if "ses" not in _entities(p)]
    if sessionless:
        return sessionless
    if session is None and len({_entities(p).get("ses") for p in mine}) == 1:
        return mine
    found = ", ".join(sorted({f"ses-{_entities(p).get('ses')}" for p in mine}))
    raise SegmentationError(
        root, f"no {what} for sub-{subject} ses-{session or '(none)'} (found {found})"
    )


def _choose(root, candidates, target_shape, target_affine, what="segmentations"):
    """One file: the only one, else the one(s) on the MEGRE grid, else desc-aseg."""
    if len(candidates) > 1:
        on_grid = [p for p in candidates if _same_grid(*_header(p), target_shape, target_affine)]
        candidates = on_grid or candidates
    if len(candidates) > 1:
        aseg = [p for p in candidates if _entities(p).get("desc") == "aseg"]
        candidates = aseg or candidates
    if len(candidates) > 1:
        listed = ", ".join(p.name for p in candidates)
        raise SegmentationError(root, f"several {what} fit ({listed}); choose one by desc")
    return candidates[0]


def _header(path):
    import nibabel as nb

    try:
        img = nb.load(path)
    except Exception as err:  # nibabel raises many types for a damaged file
        raise SegmentationError(path, f"cannot read the image ({err})") from None
    return tuple(int(n) for n in img.shape), np.asarray(img.affine, float)


def _same_grid(shape, affine, target_shape, target_affine):
    return tuple(shape[:3]) == tuple(int(n) for n in target_shape[:3]) and np.allclose(
        affine, target_affine, atol=GRID_TOLERANCE_MM
    )


def _check_sidecar_subject(dseg, subject):
    """A sidecar whose Sources point at another subject's data means a mixed-up file."""
    sidecar = dseg.with_name(dseg.name.split(".nii")[0] + ".json")
    if not sidecar.is_file():
        return
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        logger.warning("%s: unreadable JSON sidecar, ignored", sidecar)
        return
    sources = [meta.get(key) for key in ("Sources", "RawSources", "Source")]
    text = json.dumps([s for s in sources if s])
    subjects = set(re.findall(r"sub-([a-zA-Z0-9]+)", text)) - {subject}
    if subjects:
        raise SegmentationError(
            dseg, f"its sidecar says it was made from sub-{sorted(subjects)[0]}, not sub-{subject}"
        )


def _lookup(root, dseg, lookup):
    """({index: name}, where the names came from) for a dseg file."""
    if lookup not in ("auto", "freesurfer"):
        return read_lookup(lookup), str(lookup)
    own = dseg.with_name(dseg.name.split(".nii")[0] + ".tsv")
    tables = [own]
    desc = _entities(dseg).get("desc")
    folder = dseg.parent
    while True:
        if desc:
            tables.append(folder / f"desc-{desc}_dseg.tsv")
        tables.append(folder / "dseg.tsv")
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    for table in tables:
        if table.is_file():
            return read_lookup(table), str(table)
    if lookup == "freesurfer" or _made_by_freesurfer(root):
        return dict(FREESURFER_ASEG), "FreeSurfer aseg (built in)"
    raise SegmentationError(
        dseg,
        "labels without a look-up table: add a dseg.tsv (index, name) or declare FreeSurfer aseg "
        "numbering (--segmentation-lut freesurfer)",
    )


def _made_by_freesurfer(root):
    description = root / "dataset_description.json"
    try:
        meta = json.loads(description.read_text())
    except (OSError, ValueError):
        return False
    names = [str(g.get("Name", "")) for g in meta.get("GeneratedBy", []) if isinstance(g, dict)]
    return any(family in name.lower() for name in names for family in FREESURFER_FAMILY)


def _reference_t1w(root, dseg, subject):
    """The subject's T1w in the segmentation's space: same session, then any; preproc first."""
    space, session = _entities(dseg).get("space"), _entities(dseg).get("ses")
    anatomical = (None, "T1w")  # a T1w without space- is in its own (the T1w) space

    def compatible(path):
        other = _entities(path).get("space")
        return other == space or (other in anatomical and space in anatomical)

    found = [
        p for p in _nii_files(root, "T1w") if _entities(p).get("sub") == subject and compatible(p)
    ]
    if not found:
        return None

    def rank(path):
        e = _entities(path)
        return (e.get("ses") != session, e.get("desc") not in (None, "preproc"), str(path))

    return min(found, key=rank)


def _integer_labels(path, img):
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3:
        raise SegmentationError(path, f"label image must be 3-D, it has shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise SegmentationError(path, "label image holds non-integer values")
    return np.asarray(data).astype(np.int32)
