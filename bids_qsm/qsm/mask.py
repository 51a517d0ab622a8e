"""Brain masks from multi-echo magnitude (and phase): bool (X, Y, Z).

- `otsu`: Otsu's threshold on the root-sum-of-squares magnitude over echoes (or, for images
  without background such as crops, a floor at a tenth of the median).
- `threshold`: a multiple of the background noise level (from the darkest voxels), for images
  where Otsu's two-class split cuts into dark tissue.
- `phase_quality` ("phase-quality"): the `otsu` mask refined by a ROMEO-style voxel quality
  (spatial phase coherence and linearity, agreement of phase gradients between echoes 1 and 2,
  magnitude coherence), which drops voxels whose phase is noise (skull, sinus voids) while the
  smooth phase of veins and deep grey matter passes.

Every method keeps the brain's connected component (see `_brain_component`), fills holes (in
3-D and slice by slice, so ventricles and dark veins stay inside) and optionally erodes by
`erode_mm` (a distance in mm, so anisotropic voxels erode by the same physical depth).
"""

import logging

import numpy as np
from numba import njit, prange
from scipy import ndimage
from skimage.filters import threshold_otsu

from .unwrap import _bbox, voxel_quality

logger = logging.getLogger(__name__)

_NO_BACKGROUND = 0.3  # darker / brighter Otsu class mean above which there is no noise class


def _as4d(array):
    array = np.asarray(array, dtype=np.float32)
    return array[..., None] if array.ndim == 3 else array


def rss(magnitude4d):
    """Root-sum-of-squares over echoes of a (X, Y, Z[, N]) magnitude, float32 (NaN -> 0)."""
    mag = _as4d(magnitude4d)
    total = np.zeros(mag.shape[:3], np.float32)
    for n in range(mag.shape[3]):
        total += np.square(mag[..., n])
    total[~np.isfinite(total)] = 0
    return np.sqrt(total)


def background_level(magnitude):
    """RMS of the darkest 20 % of the nonzero voxels of a magnitude image (its noise floor).

    In a head scan these are background voxels, so this is proportional to the noise sigma
    (sqrt(2) sigma for one Rayleigh channel). Returns 0 when no voxel is nonzero.
    """
    values = magnitude[magnitude > 0]
    if values.size == 0:
        return 0.0
    low = values[values <= np.percentile(values, 20)]
    return float(np.sqrt(np.mean(low.astype(np.float64) ** 2)))


def _clean(mask, voxel_size, erode_mm, fill_holes=True):
    """Brain component (`_brain_component`), hole filling (3-D and per slice), erosion by
    `erode_mm`."""
    if not mask.any():
        logger.warning("mask is empty")
        return mask.astype(bool)
    mask = _brain_component(mask)
    if fill_holes:
        # On the component's bounding box (plus a border, so that outside stays outside).
        box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(mask))
        part = ndimage.binary_fill_holes(mask[box])
        for axis in range(3):
            part |= _fill_slices(part, axis)
        mask[box] = part
    if erode_mm > 0:
        # Distance from the outside, in mm: erosion by a physical depth whatever the voxel shape.
        depth = ndimage.distance_transform_edt(mask, sampling=voxel_size)
        mask = depth > erode_mm
    return mask


def _brain_component(mask):
    """The connected component of the mask that holds its deepest voxel (the brain's centre,
    not the thin shell of the scalp), after a one-voxel opening: partial volume across a thin
    skull makes bridges between scalp and brain that would otherwise join them, and hole
    filling would then take the skull in."""
    deepest = _deepest_voxel(mask)
    labels, _ = ndimage.label(ndimage.binary_erosion(mask))
    if labels[deepest]:
        return ndimage.binary_dilation(labels == labels[deepest]) & mask
    labels, _ = ndimage.label(mask)  # too thin to open: the component of the deepest voxel
    return labels == labels[deepest]


def _deepest_voxel(mask):
    """Index of (about) the mask voxel farthest from its outside, from the distance transform
    of a subsampled copy about 64 voxels across (the full one takes seconds on clinical grids)."""
    step = tuple(max(1, n // 64) for n in mask.shape)
    coarse = mask[tuple(slice(None, None, s) for s in step)]
    if coarse.any():
        depth = ndimage.distance_transform_edt(coarse, sampling=step)
        index = tuple(
            int(i) * s
            for i, s in zip(np.unravel_index(np.argmax(depth), coarse.shape), step, strict=True)
        )
        if mask[index]:
            return index
    return np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)


def _fill_slices(mask, axis):
    filled = np.empty_like(mask)
    for i in range(mask.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = i
        filled[tuple(index)] = ndimage.binary_fill_holes(mask[tuple(index)])
    return filled


def _otsu_level(image):
    """Otsu's threshold of a magnitude image, or a floor when it has no background class.

    Otsu on the square root: magnitude is skewed (bright fat, vessels), and the root evens out
    the two classes so that the split lands between noise and tissue, not inside tissue. When
    the darker class is brighter than `_NO_BACKGROUND` times the brighter one, there is no
    noise class (a crop inside the head, zero-filled or skull-stripped data) and Otsu would cut
    through tissue; then everything above a tenth of the median is kept.
    """
    values = image[image > 0]
    level = threshold_otsu(np.sqrt(values)) ** 2
    low, high = values[values <= level], values[values > level]
    if low.size and high.size and low.mean() > _NO_BACKGROUND * high.mean():
        logger.info("magnitude has no background class; masking at 10 %% of its median")
        return 0.1 * float(np.median(values))
    return level


def otsu(magnitude4d, *, voxel_size, phase=None, te=None, erode_mm=0.0, factor=1.0):
    """Otsu mask of the root-sum-of-squares magnitude (bool, 3-D).

    magnitude4d: (X, Y, Z, N) or (X, Y, Z) magnitude (any units); voxel_size: mm; phase and te
    are unused (common signature). The threshold is Otsu's times `factor`; then the largest
    connected component, hole filling and erosion by `erode_mm` (mm).
    """
    image = rss(magnitude4d)
    if not np.any(image > 0):
        return np.zeros(image.shape, dtype=bool)
    level = _otsu_level(image)
    return _clean(image > factor * level, voxel_size, erode_mm)


def threshold(magnitude4d, *, voxel_size, phase=None, te=None, erode_mm=0.0, snr=5.0):
    """Mask of voxels brighter than `snr` times the background level (bool, 3-D).

    magnitude4d: (X, Y, Z, N) or (X, Y, Z); voxel_size: mm; phase and te unused. The level of
    the root-sum-of-squares image comes from `background_level`. The threshold never exceeds
    Otsu's, so that an image without background (a crop, zero-filled or skull-stripped data,
    whose darkest voxels are tissue) is not cut into.
    """
    image = rss(magnitude4d)
    if not np.any(image > 0):
        return np.zeros(image.shape, dtype=bool)
    level = min(snr * background_level(image), _otsu_level(image))
    return _clean(image > level, voxel_size, erode_mm)


def phase_quality(magnitude4d, *, voxel_size, phase=None, te=None, erode_mm=0.0, min_quality=0.3):
    """Otsu mask refined by phase quality (bool, 3-D).

    phase: wrapped phase (rad), (X, Y, Z, N); te: echo times (s). A voxel's quality is the
    mean over its 6 neighbours of the ROMEO edge quality (`bids_qsm.qsm.unwrap.voxel_quality`);
    voxels whose quality, smoothed with a Gaussian of sigma 1.5 mm, is below `min_quality`
    (0..1) are dropped before the connected component and hole filling (which restores enclosed
    low-quality voxels such as veins, within the Otsu mask). Without phase this is `otsu`.
    """
    base = otsu(magnitude4d, voxel_size=voxel_size, erode_mm=0.0)
    if phase is None:
        return _clean(base, voxel_size, erode_mm) if erode_mm > 0 else base
    if not base.any():
        return base
    sigma = 1.5 / np.asarray(voxel_size, dtype=float)
    box = _bbox(base, margin=int(np.ceil(3 * sigma.max())))
    phase, magnitude = _as4d(phase)[box], _as4d(magnitude4d)[box]
    quality = voxel_quality(phase, magnitude=magnitude, te=te)
    good = np.zeros(base.shape, dtype=bool)
    good[box] = ndimage.gaussian_filter(quality, sigma) >= min_quality
    # Hole filling may restore enclosed low-quality voxels (veins), never beyond the Otsu mask.
    refined = _clean(base & good, voxel_size, 0.0) & base
    return _clean(refined, voxel_size, erode_mm, fill_holes=False) if erode_mm > 0 else refined


MASKS = {"otsu": otsu, "threshold": threshold, "phase-quality": phase_quality}


def reliable_field(
    mask, field_hz, noise_hz, *, echo_spacing_s=None, noise_factor=10.0, deviation_factor=40.0
):
    """The mask less its edge voxels whose fitted field cannot be trusted: bool (X, Y, Z).

    mask: bool brain mask; field_hz, noise_hz: the echo fit's field and its standard error (Hz);
    echo_spacing_s: the shortest echo spacing (s), or None for a single echo.
    A voxel is unreliable where its noise exceeds `noise_factor` times the median noise of the
    mask (no signal: the magnitude mask reached into noise or bone), or where its field departs
    from the median of its mask neighbours (26-connected) by more than half a wrap,
    1 / (2 echo_spacing_s) Hz (a phase wrap the fit took as field), or by more than
    `deviation_factor` times the median noise (0: no such limit; partial volume with bone bends
    the field of the outer layer by several Hz). The defaults were chosen on the realistic
    fixtures (docs/validation.md); the noise map must be absolute for the second limit.
    Background removal takes the mask's boundary as given (LBV, PDF) or erodes from it (SHARP),
    so a few such voxels spread their error far inside. Only unreliable voxels reachable from
    outside the mask are dropped: holes inside the brain (veins, bleeds, whose noise is high
    too) are filled back.
    """
    mask = np.asarray(mask, dtype=bool)
    field = np.asarray(field_hz, dtype=np.float32)
    noise = np.asarray(noise_hz, dtype=np.float32)
    if not mask.any():
        return mask
    box = _bbox(mask, 1)
    inside, field, noise = mask[box], field[box], noise[box]
    typical = typical_noise(noise, inside)
    limit = None
    if echo_spacing_s:
        limit = 0.5 / float(echo_spacing_s)
        if deviation_factor > 0:
            limit = min(limit, deviation_factor * typical)
    bad = unreliable_voxels(inside, field, noise, typical_hz=typical, noise_factor=noise_factor,
                            deviation_limit_hz=limit)  # fmt: skip
    kept = inside & ~bad
    if kept.any():
        kept = ndimage.binary_fill_holes(_brain_component(kept)) & inside
    out = np.zeros_like(mask)
    out[box] = kept
    dropped = int(mask.sum() - out.sum())
    if dropped:
        logger.info("dropped %d edge voxel(s) with an unreliable field from the mask", dropped)
    if dropped > 0.1 * mask.sum():
        logger.warning(
            "%.0f %% of the brain mask has an unreliable field (noise or wraps) and was left "
            "out of background removal",
            100.0 * dropped / mask.sum(),
        )
    return out


def typical_noise(noise_hz, inside):
    """Median of the finite noise (Hz) over `inside` (bool); 0 where there is none."""
    finite = inside & np.isfinite(noise_hz)
    return float(np.median(noise_hz[finite])) if finite.any() else 0.0


def unreliable_voxels(inside, field_hz, noise_hz, *, typical_hz, noise_factor, deviation_limit_hz):
    """Voxels whose fitted field cannot be trusted (bool, same grid as `inside`).

    Non-finite field or noise; noise above `noise_factor` times `typical_hz` (the median noise,
    `typical_noise`; no such test where it is 0); a field more than `deviation_limit_hz` (Hz)
    from the median of its finite 26-neighbours in `inside` (None: no such test). The rules
    of `reliable_field` (the edge) and `two_pass.hollow_mask` (the whole brain).
    """
    bad = ~np.isfinite(field_hz) | ~np.isfinite(noise_hz)
    if typical_hz > 0:
        bad |= noise_hz > noise_factor * typical_hz
    if deviation_limit_hz is not None:
        deviation = np.zeros(inside.shape, np.float32)
        _neighbour_median_deviation(np.where(bad, np.nan, field_hz).astype(np.float32), inside,
                                    deviation)  # fmt: skip
        bad |= deviation > deviation_limit_hz
    return bad


@njit(parallel=True, cache=True)
def _neighbour_median_deviation(field, mask, out):
    """out = |field - median of its finite 26-neighbours in the mask| at mask voxels (Hz).

    NaN marks voxels already known to be unreliable; they neither count as neighbours nor get
    a deviation (they are dropped anyway)."""
    nx, ny, nz = field.shape
    for i in prange(1, nx - 1):
        values = np.empty(26, np.float32)
        for j in range(1, ny - 1):
            for k in range(1, nz - 1):
                if not mask[i, j, k] or np.isnan(field[i, j, k]):
                    continue
                n = 0
                for di in range(-1, 2):
                    for dj in range(-1, 2):
                        for dk in range(-1, 2):
                            if di == 0 and dj == 0 and dk == 0:
                                continue
                            v = field[i + di, j + dj, k + dk]
                            if mask[i + di, j + dj, k + dk] and not np.isnan(v):
                                values[n] = v
                                n += 1
                if n >= 3:
                    out[i, j, k] = abs(field[i, j, k] - np.median(values[:n]))
