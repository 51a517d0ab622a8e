"""Focal susceptibility sources: microbleeds (paramagnetic) and calcifications (diamagnetic).

A focus is a compact region, about 2-10 mm across, whose susceptibility departs from its
immediate surroundings far beyond the map's noise and beyond the smooth contrast of the deep
grey matter nuclei, and which is dark on T2*-weighted images (both hemosiderin and calcium
dephase). The rule, step by step (all thresholds are parameters of `find_foci`):

1. candidates: local extrema of chi minus its smooth background (a masked Gaussian of
   `background_mm`), beyond half the acceptance contrast;
2. region: the voxels connected to the extremum that keep at least half its contrast over the
   surroundings (half maximum), grown within a window of `max_diameter_mm`; the surroundings are
   the median of a shell `gap_mm`..`gap_mm + shell_mm` around the region;
3. accepted when the contrast |peak - surroundings| >= max(`min_contrast_ppm`, `noise_factor`
   x the map's robust noise), the region is 2-10 mm across (equivalent diameter and extent along
   each principal axis), not elongated (`max_elongation`, the ratio of the principal standard
   deviations: vessels), at least `edge_mm` inside the mask (the brain's edge carries the
   residuals of background removal), corroborated by a darker magnitude
   (`max_magnitude_ratio`; it decides when given) or else a higher R2* (`min_r2star_ratio`) than
   its surroundings when either image is given, and not an artefact of a stronger source of the
   other sign within `artefact_mm` (dipole inversions leave lobes of the opposite sign beside
   strong sources);
4. vessels: an extremum whose quarter-maximum region is elongated and longer than a focus is a
   vessel section, not a focus, however compact its half-maximum region.

The deep grey matter nuclei fail the contrast test (0.1-0.2 ppm over their surroundings against
a floor of 0.25 ppm) and the pallidum and substantia nigra the extent test as well. Limits: foci
smaller than a voxel are diluted by partial volume and may fall below the floor; a focus touching
a large vein or nucleus is measured against a raised surroundings level.
"""

import numpy as np
from scipy import ndimage as ndi

PARAMAGNETIC, DIAMAGNETIC = 1, 2
FOCUS_CLASSES = {PARAMAGNETIC: "paramagnetic", DIAMAGNETIC: "diamagnetic"}


def find_foci(
    chi,
    mask,
    *,
    voxel_size,
    magnitude=None,
    r2star=None,
    min_contrast_ppm=0.25,
    noise_factor=8.0,
    min_diameter_mm=2.0,
    max_diameter_mm=10.0,
    max_elongation=2.5,
    edge_mm=4.0,
    background_mm=4.0,
    gap_mm=1.0,
    shell_mm=3.0,
    max_magnitude_ratio=0.85,
    min_r2star_ratio=1.2,
    artefact_mm=8.0,
):
    """Foci of both signs in a susceptibility map.

    chi: ppm (X, Y, Z); mask: where chi is valid; voxel_size: mm; magnitude: a T2*-weighted
    magnitude (e.g. an echo near 20 ms at 3 T) on the same grid, or None; r2star: 1/s or None.
    Thresholds as in the module's docstring (ppm, mm, ratios). Returns (dseg, foci): dseg int16
    with 1 (paramagnetic) and 2 (diamagnetic) on each focus's region, and one dict per focus in
    order of decreasing |contrast| with `id` (its region in dseg is where the focus is), `class`,
    `centroid_vox` (voxel coordinates, contrast-weighted), `volume_mm3`, `surround_ppm`,
    `mean_ppm` and `peak_ppm` (over the surroundings, signed), `moment_ppm_mm3` (volume x mean),
    `integrated_ppm_mm3` (the excess summed over the region and one voxel around it, which
    keeps what partial volume spreads beyond the half maximum),
    `magnitude_ratio` and `r2star_per_s` (None without the image), and `region` (bool array).
    """
    chi = np.asarray(chi, np.float32)
    mask = np.asarray(mask, bool)
    voxel = np.asarray(voxel_size, float)
    dseg = np.zeros(chi.shape, np.int16)
    if mask.sum() < 27:
        return dseg, []
    background = _masked_smooth(chi, mask, background_mm / voxel)
    residual = np.where(mask, chi - background, 0).astype(np.float32)
    inside = residual[mask]
    noise = 1.4826 * float(np.median(np.abs(inside - np.median(inside))))
    floor = max(min_contrast_ppm, noise_factor * noise)
    depth = ndi.distance_transform_edt(mask, sampling=voxel)
    half = np.ceil((max_diameter_mm / 2 + gap_mm + shell_mm) / voxel).astype(int) + 1

    peaks = []
    for sign in (1, -1):
        signed = sign * residual
        extremum = (signed == ndi.maximum_filter(signed, size=3)) & (signed >= floor / 2)
        extremum &= depth >= edge_mm
        peaks += [(float(signed[p]), sign, p) for p in zip(*np.nonzero(extremum), strict=True)]
    peaks.sort(key=lambda item: -item[0])

    claimed = np.zeros(chi.shape, bool)
    foci = []
    for _, sign, peak in peaks:
        if claimed[peak]:
            continue
        lo = np.maximum(np.array(peak) - half, 0)
        hi = np.minimum(np.array(peak) + half + 1, chi.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        local = tuple(np.array(peak) - lo)
        focus = _measure(
            sign * chi[box], mask[box], claimed[box], local, float(sign * background[peak]),
            voxel=voxel, gap_mm=gap_mm, shell_mm=shell_mm,
        )  # fmt: skip
        if focus is None:
            continue
        region, level, too_large = focus
        claimed[box] |= region
        if too_large or sign * chi[peak] - level < floor:
            continue
        if not _compact(region, voxel, min_diameter_mm, max_diameter_mm, max_elongation):
            continue
        ratio, r2s, r2s_ratio = _corroborate(
            region, box, magnitude, r2star, voxel, gap_mm, shell_mm, mask
        )
        # the magnitude decides when given: R2* is also raised by background gradients
        # (sinuses), which leave the magnitude of a voxel's centre bright
        if ratio is not None and ratio > max_magnitude_ratio:
            continue
        if ratio is None and r2s_ratio is not None and r2s_ratio < min_r2star_ratio:
            continue
        if _vessel(sign * chi[box], mask[box], local, level, voxel, max_diameter_mm,
                   max_elongation):  # fmt: skip
            continue
        full = np.zeros(chi.shape, bool)
        full[box] = region
        values = sign * chi[full] - level
        weights = np.maximum(values, 0) + 1e-12
        centroid = np.array(np.nonzero(full), float) @ weights / weights.sum()
        volume = float(full.sum() * np.prod(voxel))
        edge = ndi.binary_dilation(full) & mask  # the partial-volume layer around the region
        integrated = float((sign * chi[edge] - level).sum() * np.prod(voxel))
        foci.append(
            {
                "class": FOCUS_CLASSES[PARAMAGNETIC if sign > 0 else DIAMAGNETIC],
                "sign": sign,
                "centroid_vox": tuple(float(c) for c in centroid),
                "volume_mm3": volume,
                "surround_ppm": float(sign * level),
                "mean_ppm": float(sign * values.mean()),
                "peak_ppm": float(sign * values.max()),
                "moment_ppm_mm3": float(sign * values.mean() * volume),
                "integrated_ppm_mm3": sign * integrated,
                "magnitude_ratio": ratio,
                "r2star_per_s": r2s,
                "peak_vox": tuple(int(i) for i in peak),
                "region": full,
            }
        )
    foci = _drop_artefacts(foci, chi, voxel, artefact_mm)
    foci.sort(key=lambda f: -abs(f["peak_ppm"]))
    for number, focus in enumerate(foci, start=1):
        focus["id"] = number
        dseg[focus["region"]] = PARAMAGNETIC if focus["sign"] > 0 else DIAMAGNETIC
    return dseg, foci


def _masked_smooth(data, mask, sigma_vox):
    """Gaussian smoothing of `data` inside `mask` (normalised convolution), float32."""
    weight = ndi.gaussian_filter(mask.astype(np.float32), sigma_vox)
    smooth = ndi.gaussian_filter(np.where(mask, data, 0).astype(np.float32), sigma_vox)
    return (smooth / np.maximum(weight, 1e-3)).astype(np.float32)


def _measure(signed, mask, claimed, peak, level, *, voxel, gap_mm, shell_mm):
    """(half-maximum region, surroundings level, region too large) of one extremum in a box,
    chi flipped to positive; None when the peak does not stand above its surroundings."""
    too_large = False
    region = None
    for _ in range(2):  # level from the smooth background, then from the region's own shell
        contrast = signed[peak] - level
        if contrast <= 0:
            return None
        above = (signed - level >= contrast / 2) & mask & ~claimed
        components, _ = ndi.label(above)
        region = components == components[peak]
        shell = _shell(region, voxel, gap_mm, shell_mm) & mask & ~claimed
        if shell.sum() < 4:
            return None
        level = float(np.median(signed[shell]))
        too_large = bool(
            region[[0, -1]].any() or region[:, [0, -1]].any() or region[:, :, [0, -1]].any()
        )
    return region, level, too_large


def _shell(region, voxel, gap_mm, shell_mm):
    distance = ndi.distance_transform_edt(~region, sampling=voxel)
    return (distance > gap_mm) & (distance <= gap_mm + shell_mm)


def _compact(region, voxel, min_diameter, max_diameter, max_elongation):
    """The region's size and shape checks: False when it is too small, too large or a vessel."""
    n = int(region.sum())
    volume = n * float(np.prod(voxel))
    diameter = (6 * volume / np.pi) ** (1 / 3)
    if diameter < min_diameter or diameter > max_diameter:
        return False
    points = np.array(np.nonzero(region), float).T * voxel
    # each voxel spreads uniformly over its own extent: variance voxel^2 / 12 per axis
    covariance = np.cov(points.T, bias=True) if n > 1 else np.zeros((3, 3))
    covariance += np.diag(voxel**2 / 12)
    values, vectors = np.linalg.eigh(covariance)
    if np.sqrt(values[-1] / values[0]) > max_elongation:
        return False
    extent = np.ptp(points @ vectors, axis=0) + float(voxel.max())
    return bool(np.max(extent) <= max_diameter + float(voxel.max()))


def _vessel(signed, mask, peak, level, voxel, max_diameter, max_elongation):
    """Whether the extremum continues, at a quarter of its contrast, into an elongated structure
    longer than a focus: a vessel whose half-maximum section looked compact."""
    above = (signed - level >= (signed[peak] - level) / 4) & mask
    components, _ = ndi.label(above)
    region = components == components[peak]
    points = np.array(np.nonzero(region), float).T * voxel
    covariance = np.cov(points.T, bias=True) + np.diag(voxel**2 / 12)
    values, vectors = np.linalg.eigh(covariance)
    extent = np.ptp(points @ vectors, axis=0) + float(voxel.max())
    return bool(
        np.sqrt(values[-1] / values[0]) > max_elongation
        and extent.max() > max_diameter + float(voxel.max())
    )


def _corroborate(region, box, magnitude, r2star, voxel, gap_mm, shell_mm, mask):
    """(magnitude ratio focus/surroundings, mean R2* 1/s, R2* ratio); None where not given."""
    shell = _shell(region, voxel, gap_mm, shell_mm) & mask[box]
    ratio = r2s = r2s_ratio = None
    if magnitude is not None:
        local = np.asarray(magnitude, np.float32)[box]
        surround = float(np.median(local[shell]))
        ratio = float(local[region].mean() / surround) if surround > 0 else None
    if r2star is not None:
        local = np.asarray(r2star, np.float32)[box]
        r2s = float(local[region].mean())
        surround = float(np.median(local[shell]))
        r2s_ratio = r2s / surround if surround > 0 else None
    return ratio, r2s, r2s_ratio


def _drop_artefacts(foci, chi, voxel, artefact_mm):
    """Foci beside a stronger source of the other sign (twice their contrast, within
    `artefact_mm` of their peak) are the inversion's lobes around that source, not tissue."""
    kept = []
    for focus in foci:
        sign, peak = focus["sign"], np.array(focus["peak_vox"])
        reach = np.ceil(artefact_mm / voxel).astype(int)
        lo, hi = np.maximum(peak - reach, 0), np.minimum(peak + reach + 1, chi.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.meshgrid(*[(np.arange(a, b) - p) * v for a, b, p, v in
                             zip(lo, hi, peak, voxel, strict=True)], indexing="ij")  # fmt: skip
        ball = sum(g**2 for g in grid) <= artefact_mm**2
        opposite = -sign * (chi[box][ball] - focus["surround_ppm"])
        if opposite.max() >= 2 * abs(focus["peak_ppm"]):
            continue
        kept.append(focus)
    return kept


def centroids_mm(foci, affine):
    """Scanner coordinates (mm) of each focus's centroid, through the image's 4x4 affine."""
    affine = np.asarray(affine, float)
    return [tuple(affine[:3, :3] @ np.array(f["centroid_vox"]) + affine[:3, 3]) for f in foci]
