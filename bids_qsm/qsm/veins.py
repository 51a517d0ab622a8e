"""Veins in a susceptibility map and the venous oxygen saturation their susceptibility implies.

Deoxyhaemoglobin makes venous blood paramagnetic. Veins are found as bright tubes: a multi-scale
Hessian vesselness (Frangi et al. 1998) of the positive part of chi, kept where chi also stands
above its smooth surroundings. Their susceptibility is measured where they are wide enough to
escape partial volume: on the voxels at least `core_mm` deep inside the vein mask (vessels about
three voxels across or wider), each with the largest value of itself and its face neighbours
in the vein (a vessel between voxel centres); thinner veins are in the mask but not in the
value. It is referenced to a stated region: CSF from a segmentation when one is given, else
the tissue in a shell around the veins. Then (Jain et al. 2012; Spees et al. 2001, SI units)

    Y = 1 - dchi / (Hct * dchi_do) + dchi_oxy / dchi_do,  dchi_do = 3.43 ppm, dchi_oxy = -0.10 ppm

Limits: QSM underestimates veins thinner than about three voxels and those parallel to B0 less
than those across it (streaking, the cone of the dipole kernel); regularised inversions shrink
vessel contrast; the model assumes a single haematocrit (0.40 by default; lower in small vessels)
and blood with no other paramagnetic source. Research use, no diagnostic claim.
"""

import numpy as np
from scipy import ndimage as ndi

DCHI_DO = 3.43  # ppm, fully deoxygenated minus fully oxygenated blood per unit Hct (SI)
DCHI_OXY = -0.10  # ppm, oxygenated blood minus water (SI)


def vesselness(chi, mask, *, voxel_size, scales_mm=(1.0, 1.5, 2.0, 3.0), alpha=0.5, beta=0.5):
    """Frangi vesselness (0..1) of bright tubes in chi (ppm), maximum over `scales_mm` (the
    Gaussian's sigma in mm), and the scale (mm) at which each voxel reached it.

    chi outside `mask` and below zero is set to zero first (only paramagnetic tubes count);
    Hessians are scale-normalised (sigma^2). The structure term's constant is half the largest
    Hessian norm of each scale, as Frangi proposed. Computed on the mask's bounding box (with a
    margin of three of the largest sigmas), zero elsewhere.
    """
    voxel = np.asarray(voxel_size, float)
    mask = np.asarray(mask, bool)
    vesselness_full = np.zeros(mask.shape, np.float32)
    scale_full = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return vesselness_full, scale_full
    where = np.argwhere(mask)
    margin = np.ceil(3 * max(scales_mm) / voxel).astype(int)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vesselness_full[box], scale_full[box] = _vesselness_box(
        np.asarray(chi, np.float32)[box], mask[box], voxel, scales_mm, alpha, beta
    )
    return vesselness_full, scale_full


def _vesselness_box(chi, mask, voxel, scales_mm, alpha, beta):
    positive = np.where(mask, np.maximum(chi, 0), 0).astype(np.float32)
    best = np.zeros(positive.shape, np.float32)
    best_scale = np.zeros(positive.shape, np.float32)
    for scale in scales_mm:
        sigma = scale / voxel
        hessian = np.empty((*positive.shape, 3, 3), np.float32)
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                h = ndi.gaussian_filter(positive, sigma, order=order) * np.float32(scale**2)
                h /= np.float32(voxel[i] * voxel[j])  # derivatives per mm
                hessian[..., i, j] = hessian[..., j, i] = h
        eig = np.linalg.eigvalsh(hessian)
        del hessian
        order = np.argsort(np.abs(eig), axis=-1)
        eig = np.take_along_axis(eig, order, axis=-1)
        l1, l2, l3 = eig[..., 0], eig[..., 1], eig[..., 2]
        a2, a3 = np.abs(l2), np.abs(l3) + 1e-12
        ra = a2 / a3
        rb = np.abs(l1) / np.sqrt(a2 * a3 + 1e-24)
        s = np.sqrt(l1**2 + l2**2 + l3**2)
        c = 0.5 * float(s.max()) + 1e-12
        v = (1 - np.exp(-(ra**2) / (2 * alpha**2))) * np.exp(-(rb**2) / (2 * beta**2))
        v *= 1 - np.exp(-(s**2) / (2 * c**2))
        v[(l2 > 0) | (l3 > 0)] = 0  # bright tubes: both large curvatures negative
        better = v > best
        best[better], best_scale[better] = v[better], scale
    return best * mask, best_scale * mask


def vein_mask(
    chi,
    mask,
    *,
    voxel_size,
    exclude=None,
    seed_vesselness=0.2,
    seed_contrast_ppm=0.2,
    min_vesselness=0.05,
    min_contrast_ppm=0.08,
    background_mm=6.0,
    min_volume_mm3=30.0,
    edge_mm=2.0,
):
    """Boolean vein mask of a susceptibility map (ppm), by hysteresis.

    Seeds: voxels whose vesselness (`vesselness`, relative to its 99.9th percentile in the mask)
    reaches `seed_vesselness` and whose chi exceeds its masked Gaussian background
    (`background_mm`) by `seed_contrast_ppm`, above the deep grey matter nuclei's 0.1-0.2 ppm;
    the mask grows from them through voxels reaching `min_vesselness` and `min_contrast_ppm`.
    `exclude` (bool, e.g. the foci found: blobs have a high Hessian norm too) is left out;
    connected pieces under `min_volume_mm3` and voxels within `edge_mm` of the mask's edge are
    dropped.
    """
    voxel = np.asarray(voxel_size, float)
    mask = np.asarray(mask, bool)
    if exclude is not None:
        mask = mask & ~ndi.binary_dilation(np.asarray(exclude, bool))
    chi = np.asarray(chi, np.float32)
    v, _ = vesselness(chi, mask, voxel_size=voxel)
    top = float(np.percentile(v[mask], 99.9)) if mask.any() else 0.0
    if top <= 0:
        return np.zeros(mask.shape, bool)
    v /= top
    sigma = background_mm / voxel
    weight = ndi.gaussian_filter(mask.astype(np.float32), sigma)
    background = ndi.gaussian_filter(np.where(mask, chi, 0), sigma) / np.maximum(weight, 1e-3)
    contrast = chi - background
    inside = mask & (ndi.distance_transform_edt(mask, sampling=voxel) > edge_mm)
    grow = (v >= min_vesselness) & (contrast >= min_contrast_ppm) & inside
    seeds = (v >= seed_vesselness) & (contrast >= seed_contrast_ppm) & grow
    components, n = ndi.label(grow)
    if not n:
        return grow
    seeded = np.unique(components[seeds])
    sizes = ndi.sum_labels(grow, components, index=np.arange(1, n + 1)) * np.prod(voxel)
    kept = [i for i in seeded[seeded > 0] if sizes[i - 1] >= min_volume_mm3]
    return np.isin(components, kept)


def oxygen_saturation(dchi_ppm, *, hct=0.40, dchi_do=DCHI_DO, dchi_oxy=DCHI_OXY):
    """Venous oxygen saturation Y (0..1) from the vein's susceptibility over its reference (ppm):
    Y = 1 - dchi / (hct * dchi_do) + dchi_oxy / dchi_do (SI; Jain 2012, Spees 2001)."""
    return 1.0 - dchi_ppm / (hct * dchi_do) + dchi_oxy / dchi_do


def measure_veins(
    chi,
    veins,
    mask,
    *,
    voxel_size,
    reference=None,
    reference_name="CSF",
    hct=0.40,
    core_mm=None,
    shell_mm=(2.0, 5.0),
    min_depth_mm=10.0,
):
    """Venous susceptibility and saturation of a vein mask.

    chi: ppm; veins, mask: bool; voxel_size: mm; reference: bool mask of the reference region
    (e.g. CSF from a segmentation), or None for the tissue `shell_mm` (inner, outer mm) around
    the veins; core_mm: the depth inside the vein mask (mm) a voxel needs to count (default the
    largest voxel edge: vessels about three voxels across; with none that wide, the veins'
    centrelines are measured instead and `measured_on` says so); min_depth_mm: how far inside
    `mask` (mm) a measured voxel must be (near the brain's edge, background-removal residuals
    make vein-like bright streaks: on a COSMOS brain at 2 mm they carried most of the wide
    voxels, with a true chi near 0). Returns a dict with
    `vein_volume_mm3` (the mask), `measured_volume_mm3` (the voxels measured), `measured_on`,
    `vein_ppm` (the median over them of the largest chi of each and its six face neighbours in
    the veins), `reference`, `reference_ppm` (median chi of the reference
    region), `dchi_ppm`, `hct` and `Y`; the values are None when there is no vein or the
    reference is empty.
    """
    voxel = np.asarray(voxel_size, float)
    veins, mask = np.asarray(veins, bool) & np.asarray(mask, bool), np.asarray(mask, bool)
    core_mm = float(voxel.max()) if core_mm is None else float(core_mm)
    depth = ndi.distance_transform_edt(veins, sampling=voxel)
    deep = ndi.distance_transform_edt(mask, sampling=voxel) >= min_depth_mm
    core = (depth > core_mm + 1e-6) & deep  # a voxel on the vein's edge has depth one voxel
    if reference is None:
        outside = ndi.distance_transform_edt(~veins, sampling=voxel)
        region = (outside > shell_mm[0]) & (outside <= shell_mm[1]) & mask
        name = f"tissue {shell_mm[0]:g}-{shell_mm[1]:g} mm around the veins"
    else:
        region = np.asarray(reference, bool) & mask & ~veins
        name = reference_name
    measured_on = "wide veins"
    if not core.any() and veins.any():
        # no vein is wide enough: their centrelines (chi's maxima across them), which partial
        # volume lowers, say so in the table rather than giving no value
        ridge = np.where(veins, chi, -np.inf)
        core = veins & deep & (ridge >= ndi.maximum_filter(ridge, size=3))
        measured_on = "centrelines (partial volume: underestimated)"
    result = {
        "vein_volume_mm3": float(veins.sum() * np.prod(voxel)),
        "measured_volume_mm3": float(core.sum() * np.prod(voxel)),
        "measured_on": measured_on if core.any() else None,
        "vein_ppm": None,
        "reference": name,
        "reference_ppm": None,
        "dchi_ppm": None,
        "hct": float(hct),
        "Y": None,
    }
    if region.any():
        result["reference_ppm"] = float(np.median(chi[region]))
    if core.any():
        # partial volume only lowers a paramagnetic vessel's voxels: each deep voxel counts
        # with the largest value of itself and its six face neighbours in the vein, which
        # follows the vessel's axis where it runs between voxel centres
        inside = np.where(veins, chi, -np.inf)
        peak = ndi.maximum_filter(inside, footprint=ndi.generate_binary_structure(3, 1))
        result["vein_ppm"] = float(np.median(peak[core]))
    if result["vein_ppm"] is not None and result["reference_ppm"] is not None:
        result["dchi_ppm"] = result["vein_ppm"] - result["reference_ppm"]
        result["Y"] = float(oxygen_saturation(result["dchi_ppm"], hct=hct))
    return result
