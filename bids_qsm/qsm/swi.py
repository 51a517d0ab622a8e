"""Susceptibility-weighted imaging (SWI) and minimum intensity projections from a field map.

SWI (Haacke et al. 2004) multiplies a T2*-weighted magnitude by a mask made from the high-pass
filtered phase, raised to a power, so that veins and other strong susceptibility sources turn
dark. As in CLEAR-SWI (Eckstein et al. 2021) the multi-echo data are combined first: the echoes'
magnitudes by root-sum-of-squares, the phase through the unwrapped, echo-combined field map
(Hz), which has no wraps to alias into the mask. The field is high-pass filtered here and turned
back into a phase at one effective echo time:

    phase (rad) = 2 pi * highpass(field_hz) * phase_te,      mask = clip(1 - |phase| / pi, 0, 1)

Sign convention: the project's (see the contract): a positive field (paramagnetic sources such
as deoxygenated venous blood, hemosiderin in a microbleed, iron) makes the phase grow with TE.
Haacke's original negative-phase mask darkens paramagnetic tissue in the opposite (left-handed)
convention; here it is the `"paramagnetic"` mask, which darkens positive phase only. The default
`"symmetric"` mask (CLEAR-SWI's "triangular" scaling) darkens both signs, because:

- the field inside a vein depends on its angle to B0: (chi/6)(3 cos^2 theta - 1) is positive for
  a vein along B0 and negative for one perpendicular to it, so a positive-only mask misses the
  in-plane veins of an axial slab;
- a calcification (diamagnetic) must look as dark as a microbleed: the field inside a sphere is
  zero and its dipolar blooming has lobes of both signs, so only a mask of both signs darkens
  the same rim around both. Their cores are dark through the magnitude (short T2*).

Telling a calcification from a microbleed is the susceptibility map's job (its sign), not SWI's.

References: Haacke EM, et al. Susceptibility weighted imaging (SWI). Magn Reson Med
2004;52:612-618. Eckstein K, et al. Improved susceptibility weighted imaging at ultra-high field
using bipolar multi-echo acquisition and optimized image processing: CLEAR-SWI. NeuroImage
2021;237:118175.
"""

import numpy as np
from scipy import ndimage

PHASE_MASKS = ("symmetric", "paramagnetic")
MAGNITUDE_COMBINATIONS = ("rss", "te-weighted")


def swi(
    magnitude,
    field_hz,
    mask,
    *,
    te,
    voxel_size,
    phase_mask="symmetric",
    phase_power=4,
    phase_te=None,
    highpass_sigma_mm=4.0,
    magnitude_combination="rss",
):
    """Susceptibility-weighted image: combined magnitude x phase mask ** `phase_power`.

    magnitude: (X, Y, Z, N) echoes (or one 3-D echo), any units; field_hz: (X, Y, Z) unwrapped
    field (Hz), e.g. the echo-combined total field or a local field, positive = paramagnetic;
    mask: bool brain mask; te: echo times (s), ascending; voxel_size: mm.
    `phase_mask`: "symmetric" darkens positive and negative phase, "paramagnetic" positive phase
    only (see the module docstring); `phase_power`: the mask's exponent (4 in Haacke 2004);
    `phase_te` (s): echo time at which the filtered field becomes a phase, the longest echo
    time by default (the phase of a conventional single-echo SWI at that TE, without wraps);
    `highpass_sigma_mm`: standard deviation (mm) of the Gaussian whose masked low-pass is
    subtracted from the field, 0 to use the field as it is (a local field needs no filtering);
    `magnitude_combination`: "rss" (root-sum-of-squares, CLEAR-SWI's SNR combination) or
    "te-weighted" (echoes weighted by TE, more T2* contrast).
    Returns the SWI (units of the magnitude), float32, 0 outside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    te = np.atleast_1d(np.asarray(te, dtype=float))
    combined = combine_magnitude(magnitude, te=te, method=magnitude_combination)
    field = highpass_field(field_hz, mask, voxel_size=voxel_size, sigma_mm=highpass_sigma_mm)
    weights = phase_weights(
        field, te=te.max() if phase_te is None else phase_te, mode=phase_mask, power=phase_power
    )
    return np.where(mask, combined * weights, np.float32(0.0)).astype(np.float32)


def combine_magnitude(magnitude, *, te, method="rss"):
    """One magnitude (X, Y, Z) from the echoes (X, Y, Z, N) (any units; te in s).

    "rss": sqrt(sum_n m_n^2), the SNR-optimal combination for equal noise in every echo;
    "te-weighted": sum_n TE_n m_n / sum_n TE_n, which leans on the T2*-weighted late echoes.
    A 3-D magnitude is a single echo and is returned as it is (float32).
    """
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.ndim == 3:
        return magnitude
    if method == "rss":
        return np.sqrt(np.sum(magnitude**2, axis=-1, dtype=np.float32))
    if method == "te-weighted":
        weights = np.asarray(te, dtype=np.float32)
        return (magnitude @ weights / weights.sum()).astype(np.float32)
    raise ValueError(
        f"unknown magnitude combination {method!r}; use one of {MAGNITUDE_COMBINATIONS}"
    )


def highpass_field(field_hz, mask, *, voxel_size, sigma_mm=4.0):
    """High-pass filtered field (Hz): the field less its Gaussian low-pass within the mask.

    The low-pass is a normalised convolution, G * (f m) / G * m, so that the zeros outside the
    mask do not pull the brain's edge down; `sigma_mm` is the Gaussian's standard deviation in
    mm (per axis for anisotropic voxels); 0 returns the field unfiltered (0 outside the mask).
    """
    mask = np.asarray(mask, dtype=bool)
    field = np.where(mask, np.asarray(field_hz, dtype=np.float32), np.float32(0.0))
    if not sigma_mm:
        return field
    sigma = np.asarray(sigma_mm, dtype=float) / np.asarray(voxel_size, dtype=float)
    weight = mask.astype(np.float32)
    low = ndimage.gaussian_filter(field, sigma, mode="constant")
    norm = ndimage.gaussian_filter(weight, sigma, mode="constant")
    low = np.divide(low, norm, out=np.zeros_like(low), where=norm > 1e-6)
    return np.where(mask, field - low, np.float32(0.0)).astype(np.float32)


def phase_weights(field_hz, *, te, mode="symmetric", power=4):
    """Phase mask in [0, 1] of a (high-pass filtered) field (Hz) at echo time `te` (s).

    phase = 2 pi field te (rad); "symmetric": (1 - |phase| / pi) ** power, "paramagnetic":
    (1 - max(phase, 0) / pi) ** power; phases beyond pi give 0 (no wrap back to bright).
    """
    if mode not in PHASE_MASKS:
        raise ValueError(f"unknown phase mask {mode!r}; use one of {PHASE_MASKS}")
    phase = 2.0 * np.pi * float(te) * np.asarray(field_hz, dtype=np.float32)
    darkening = np.abs(phase) if mode == "symmetric" else np.maximum(phase, 0.0)
    return (np.clip(1.0 - darkening / np.pi, 0.0, 1.0) ** power).astype(np.float32)


def minimum_intensity_projection(image, *, voxel_size, slab_mm=16.0, axis=2, mask=None):
    """Sliding-slab minimum intensity projection (minIP) of `image` along `axis`.

    Each output slice is the minimum over the slab of 2 h + 1 slices centred on it, h =
    round(slab_mm / 2 / voxel_size[axis]) (the slab is cut short at the volume's ends). With a
    `mask`, only voxels inside it take part, so the zeros outside the brain do not eat into its
    edge, and voxels outside the mask are 0; without one, every voxel counts.
    Returns float32 of the image's shape.
    """
    image = np.asarray(image, dtype=np.float32)
    half = int(round(slab_mm / 2.0 / float(voxel_size[axis])))
    if mask is None:
        return ndimage.minimum_filter1d(image, 2 * half + 1, axis=axis, mode="nearest")
    mask = np.asarray(mask, dtype=bool)
    inside = np.where(mask, image, np.float32(np.inf))
    projection = ndimage.minimum_filter1d(
        inside, 2 * half + 1, axis=axis, mode="constant", cval=np.inf
    )
    return np.where(mask, projection, np.float32(0.0)).astype(np.float32)
