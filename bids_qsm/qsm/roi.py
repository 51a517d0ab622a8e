"""Per-region susceptibility statistics from a discrete segmentation on the map's grid.

One row per label: voxel count and volume (mm^3) inside the map's mask, and the mean, median,
standard deviation and quartiles of chi (ppm). Labels may first be eroded one by one, so that
voxels which share a neighbour with another label (partial volume at the boundary) are left out.
Each label's coverage by the mask is reported too: a label the mask covers only in part (a skull
label whose rim the mask touches, a structure cut by the mask's edge) is described by that part.
"""

import logging

import numpy as np
import scipy.ndimage as ndi

logger = logging.getLogger(__name__)

ROI_COLUMNS = ("index", "name", "n_voxels", "volume_mm3", "mean", "median", "std", "p25", "p75")

# FreeSurfer aseg numbering (FreeSurferColorLUT.txt), as FreeSurfer, FastSurfer and SynthSeg
# export it; 27/59 are the LUT's substantia nigra entries (spelled as FreeSurfer spells them).
FREESURFER_ASEG = {
    2: "Left-Cerebral-White-Matter",
    3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    7: "Left-Cerebellum-White-Matter",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    24: "CSF",
    26: "Left-Accumbens-area",
    27: "Left-Substancia-Nigra",
    28: "Left-VentralDC",
    30: "Left-vessel",
    31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
    59: "Right-Substancia-Nigra",
    60: "Right-VentralDC",
    62: "Right-vessel",
    63: "Right-choroid-plexus",
    72: "5th-Ventricle",
    77: "WM-hypointensities",
    80: "non-WM-hypointensities",
    85: "Optic-Chiasm",
    251: "CC_Posterior",
    252: "CC_Mid_Posterior",
    253: "CC_Central",
    254: "CC_Mid_Anterior",
    255: "CC_Anterior",
}

# Named label sets for referencing (`resolve_labels`), by FreeSurfer aseg names.
LABEL_SETS = {
    "ventricles": ("Left-Lateral-Ventricle", "Right-Lateral-Ventricle"),
    "csf": ("Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "CSF"),
    "white-matter": ("Left-Cerebral-White-Matter", "Right-Cerebral-White-Matter"),
}


def erode_labels(labels, iterations=1):
    """Each label eroded by itself `iterations` times with the 6-neighbour (face) 3-D cross.

    A voxel keeps its label only if its whole neighbourhood up to that city-block distance
    (in voxels) carries the same label; the grid's edge counts as another label. Removed voxels
    become 0. Labels are integers; the dtype is kept.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    cross = ndi.generate_binary_structure(3, 1)
    for _ in range(int(iterations)):
        # A voxel survives a pass if its 6 neighbours all carry its own (current) label.
        same = (ndi.maximum_filter(out, footprint=cross, mode="constant", cval=0) == out) & (
            ndi.minimum_filter(out, footprint=cross, mode="constant", cval=0) == out
        )
        out = np.where(same, out, 0).astype(labels.dtype)
    return out


def label_coverage(labels, mask):
    """{label: fraction of its voxels inside `mask`} for every label (0 excluded) that has a
    voxel inside it; labels: integer image, mask: bool, same grid. Fractions are of the voxels
    on this grid (a label cut by the field of view counts the part in view)."""
    labels = np.asarray(labels)
    inside = np.asarray(mask, dtype=bool) & (labels != 0)
    total = dict(zip(*np.unique(labels[labels != 0], return_counts=True), strict=True))
    within = zip(*np.unique(labels[inside], return_counts=True), strict=True)
    return {int(k): float(n / total[k]) for k, n in within}


def roi_statistics(chi, mask, labels, *, voxel_size, names=None, erode_voxels=0):
    """Rows of per-label chi statistics (ppm) inside `mask`, in ascending label order.

    chi: 3-D map (ppm); mask: bool, where chi is valid; labels: integer image on the same grid
    (0 = unlabelled, never reported); voxel_size: mm, for volume_mm3; names: {index: name}
    (a label missing from it is named "n/a"); erode_voxels: erode each label by this many voxels
    first (`erode_labels`). A label that erosion empties inside the mask keeps its un-eroded
    voxels instead, so small nuclei still get a row; such rows have `eroded` False.

    Each row is a dict with the keys of ROI_COLUMNS (n_voxels inside the mask, volume in mm^3;
    mean, median, std (population, ddof 0) and 25th/75th percentiles in ppm), `eroded`: whether
    the statistics come from the eroded label, and `coverage`: the label's fraction inside the
    mask (`label_coverage`). Labels with no voxel inside the mask are left out.
    """
    chi = np.asarray(chi, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    labels = np.asarray(labels)
    if not (chi.shape == mask.shape == labels.shape):
        raise ValueError(
            f"map {chi.shape}, mask {mask.shape} and labels {labels.shape} differ in shape"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    names = {} if names is None else names
    voxel_mm3 = float(np.prod(voxel_size))
    full = _values_by_label(chi, mask, labels)
    eroded = _values_by_label(chi, mask, erode_labels(labels, erode_voxels)) if erode_voxels else {}
    coverage = label_coverage(labels, mask)
    rows = []
    for index, values in full.items():
        used_erosion = bool(erode_voxels) and index in eroded
        if used_erosion:
            values = eroded[index]
        elif erode_voxels:
            logger.warning(
                "label %d (%s) vanishes when eroded by %d voxel(s); using it un-eroded",
                index, names.get(index, "n/a"), erode_voxels,
            )  # fmt: skip
        p25, median, p75 = np.percentile(values, (25, 50, 75))
        rows.append(
            {
                "index": index,
                "name": names.get(index, "n/a"),
                "n_voxels": int(values.size),
                "volume_mm3": float(values.size * voxel_mm3),
                "mean": float(values.mean()),
                "median": float(median),
                "std": float(values.std()),
                "p25": float(p25),
                "p75": float(p75),
                "eroded": used_erosion,
                "coverage": coverage[index],
            }
        )
    return rows


def resolve_labels(spec, names):
    """Label indices of a reference region from a spec: indices, names or a named set.

    spec: a LABEL_SETS key ("ventricles", "csf", ...), or a sequence / comma-separated string of
    label indices and label names (case-insensitive); names: {index: name} of the segmentation.
    Raises ValueError naming what is not found.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [str(item).strip() for item in items if str(item).strip()]
    if len(items) == 1 and items[0].lower() in LABEL_SETS:
        items = list(LABEL_SETS[items[0].lower()])
    by_name = {name.lower(): index for index, name in names.items()}
    found, missing = [], []
    for item in items:
        if item.lstrip("-").isdigit():
            found.append(int(item))
        elif item.lower() in by_name:
            found.append(by_name[item.lower()])
        else:
            missing.append(item)
    if missing or not found:
        raise ValueError(f"reference labels not in the look-up table: {', '.join(missing) or spec}")
    return tuple(sorted(set(found)))


def _values_by_label(chi, mask, labels):
    """{label: float64 chi values inside the mask}, labels ascending, 0 excluded."""
    inside = mask & (labels != 0)
    keys = labels[inside]
    values = chi[inside].astype(np.float64)
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    unique, starts = np.unique(keys, return_index=True)
    return {int(k): v for k, v in zip(unique, np.split(values, starts[1:]), strict=True)}
