"""Paramagnetic rims of given lesions (e.g. chronic active multiple sclerosis lesions).

Each lesion (a label of a lesion segmentation on the map's grid) is split into:
- its core: lesion voxels deeper than `rim_mm` from its edge;
- its rim band: lesion voxels within `rim_mm` of the edge (inner band) and outside voxels within
  `rim_mm` of it (outer band), so that a rim drawn inside or just outside the lesion mask counts;
- a ring of normal-appearing white matter (NAWM): voxels `ring_mm` (inner, outer) away from
  every lesion, inside the white matter when a mask of it is given, veins and foci excluded.

The band is divided into angular sectors around the lesion's centroid (`n_sectors` directions
spread evenly over the sphere); a sector is above the surroundings when its band mean (the
larger of the inner and outer band means) exceeds both the NAWM median and the core median by
at least max(`min_rim_contrast_ppm`, `noise_factor` x the spread of the NAWM ring's sector
medians). The rule: a lesion has a rim when at least `min_fraction` (2/3, as in the consensus
criterion of a rim along at least two thirds of the lesion edge) of its sectors are above.
Lesions under `min_diameter_mm` (equivalent diameter), or with no voxel deeper than the band
(no core to tell a rim from a uniformly raised lesion), are reported, not judged. Limits: the
band is about one voxel at 2 mm; a rim thinner than a voxel is diluted by partial volume, and
a lesion beside a vein or the ventricles has a biased ring. Research use, no diagnostic claim.
"""

import numpy as np
from scipy import ndimage as ndi


def sector_directions(n):
    """`n` unit vectors spread evenly over the sphere (Fibonacci lattice), shape (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def lesion_rims(
    chi,
    mask,
    lesions,
    *,
    voxel_size,
    names=None,
    veins=None,
    foci=None,
    white_matter=None,
    rim_mm=2.0,
    ring_mm=(3.0, 8.0),
    n_sectors=16,
    min_sector_voxels=2,
    min_rim_contrast_ppm=0.015,
    noise_factor=2.0,
    min_fraction=2 / 3,
    min_diameter_mm=3.0,
):
    """One dict per lesion label (ascending index) with its rim read-out.

    chi: ppm; mask: where chi is valid; lesions: int labels (0 background) on the same grid;
    voxel_size: mm; names: {index: name}; veins, foci, white_matter: bool masks or None. Keys:
    `index`, `name`, `volume_mm3`, `diameter_mm` (equivalent sphere), `core_ppm`, `rim_ppm`
    (mean of the sector values), `nawm_ppm` (medians), `rim_fraction` (sectors above / sectors
    with band voxels), `threshold_ppm` (the margin a sector needs), `judged` and `rim`
    (True/False, or None when not judged). Values are None where a region is empty.
    """
    voxel = np.asarray(voxel_size, float)
    chi = np.asarray(chi, np.float32)
    mask = np.asarray(mask, bool)
    lesions = np.asarray(lesions)
    names = names or {}
    directions = sector_directions(n_sectors)
    any_lesion = lesions > 0
    far = ndi.distance_transform_edt(~any_lesion, sampling=voxel)
    excluded = np.zeros(mask.shape, bool)
    for extra in (veins, foci):
        if extra is not None:
            excluded |= ndi.binary_dilation(np.asarray(extra, bool))
    ring_ok = mask & ~excluded & (far > ring_mm[0]) & (far <= ring_mm[1])
    if white_matter is not None:
        ring_ok &= np.asarray(white_matter, bool)
    rows = []
    for index in sorted(int(i) for i in np.unique(lesions[any_lesion])):
        rows.append(
            _one_lesion(
                chi, mask, lesions == index, ring_ok, excluded, voxel=voxel, index=index,
                name=names.get(index, f"lesion-{index}"), directions=directions,
                rim_mm=rim_mm, ring_outer=ring_mm[1], min_sector_voxels=min_sector_voxels,
                min_rim_contrast_ppm=min_rim_contrast_ppm, noise_factor=noise_factor,
                min_fraction=min_fraction, min_diameter_mm=min_diameter_mm,
            )
        )  # fmt: skip
    return rows


def _one_lesion(chi, mask, lesion, ring_ok, excluded, *, voxel, index, name, directions, rim_mm,
                ring_outer, min_sector_voxels, min_rim_contrast_ppm, noise_factor, min_fraction,
                min_diameter_mm):  # fmt: skip
    n = int(lesion.sum())
    volume = n * float(np.prod(voxel))
    diameter = (6 * volume / np.pi) ** (1 / 3)
    row = {
        "index": index, "name": name, "volume_mm3": volume, "diameter_mm": diameter,
        "core_ppm": None, "rim_ppm": None, "nawm_ppm": None, "rim_fraction": None,
        "threshold_ppm": None, "judged": False, "rim": None,
    }  # fmt: skip
    # a box around the lesion and its ring keeps the distance transforms small
    reach = np.ceil((ring_outer + rim_mm) / voxel).astype(int) + 1
    where = np.nonzero(lesion)
    lo = np.maximum(np.min(where, axis=1) - reach, 0)
    hi = np.minimum(np.max(where, axis=1) + reach + 1, lesion.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    inside, valid = lesion[box], mask[box] & ~excluded[box]
    values = chi[box]
    depth = ndi.distance_transform_edt(inside, sampling=voxel)
    out = ndi.distance_transform_edt(~inside, sampling=voxel)
    # distances run between voxel centres: an edge voxel is half a voxel from the edge
    half = 0.5 * float(voxel.min())
    core = inside & (depth - half > rim_mm) & valid
    inner = inside & (depth - half <= rim_mm) & valid
    outer = ~inside & (out - half <= rim_mm) & valid
    ring = ring_ok[box] & (out - half > rim_mm)
    if core.any():
        row["core_ppm"] = float(np.median(values[core]))
    if ring.any():
        row["nawm_ppm"] = float(np.median(values[ring]))
    centre = np.array(where, float).mean(axis=1) - lo
    coords = np.indices(inside.shape, dtype=float).reshape(3, -1).T
    offsets = (coords - centre) * voxel
    norm = np.linalg.norm(offsets, axis=1, keepdims=True)
    sector = np.argmax(offsets / np.maximum(norm, 1e-6) @ directions.T, axis=1).reshape(
        inside.shape
    )
    band_values, ring_values = [], []
    for s in range(len(directions)):
        parts = [
            values[part & (sector == s)]
            for part in (inner, outer)
            if (part & (sector == s)).sum() >= min_sector_voxels
        ]
        if parts:
            band_values.append(max(float(p.mean()) for p in parts))
        ring_part = values[ring & (sector == s)]
        if ring_part.size >= min_sector_voxels:
            ring_values.append(float(np.median(ring_part)))
    if band_values:
        row["rim_ppm"] = float(np.mean(band_values))
    if diameter < min_diameter_mm or None in (row["nawm_ppm"], row["core_ppm"]) or not band_values:
        return row  # too small, or no core to tell a rim from a uniformly raised lesion
    spread = 1.4826 * float(np.median(np.abs(np.array(ring_values) - np.median(ring_values))))
    threshold = max(min_rim_contrast_ppm, noise_factor * spread)
    level = max(row["nawm_ppm"], row["core_ppm"])
    above = np.array(band_values) - level >= threshold
    row.update(
        rim_fraction=float(above.mean()),
        threshold_ppm=threshold,
        judged=True,
        rim=bool(above.mean() >= min_fraction),
    )
    return row


def label_lesions(lesions, names=None):
    """(int32 labels, {index: name}) of a lesion image: its own labels with `names`, or for a
    binary mask (`names` empty) its connected pieces (26-neighbour), named lesion-<n>."""
    lesions = np.asarray(lesions)
    if names:
        return lesions.astype(np.int32), dict(names)
    labels, n = ndi.label(lesions > 0, structure=np.ones((3, 3, 3)))
    return labels.astype(np.int32), {i: f"lesion-{i}" for i in range(1, n + 1)}


def foci_in_lesions(foci, lesions):
    """{focus id: lesion index} for foci whose peak voxel lies inside a lesion label."""
    lesions = np.asarray(lesions)
    found = {}
    for focus in foci:
        index = int(lesions[tuple(focus["peak_vox"])])
        if index:
            found[focus["id"]] = index
    return found
