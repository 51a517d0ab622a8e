"""Echo combination: unwrapped multi-echo phase (rad) -> field (Hz) and its noise (Hz).

Model per voxel: phase_n = phi0 + 2 pi f TE_n (+ noise), phi0 the receive-phase offset, f the
field offset (Hz, positive for paramagnetic: phase grows with TE). Complex noise of standard
deviation sigma per channel gives phase noise sigma / magnitude_n, so the inverse-variance
weights are magnitude_n^2 (for phase/TE this is the familiar magnitude^2 TE^2).

- `linear`: weighted least squares of phase over TE with an intercept. The intercept absorbs
  phi0, so this is MCPC-3D-S compatible (same field with or without the offset removed first);
  unequal echo spacing is handled; a single echo gives f = phase / (2 pi TE) (no intercept: the
  offset must have been removed, e.g. by `mcpc3ds_offset`, or is assumed 0).
- `nonlinear`: the complex fit of Liu et al. 2013, min over (phi0, f) of
  sum_n m_n^2 |exp(i phase_n) - exp(i (phi0 + 2 pi f TE_n))|^2, by Gauss-Newton per voxel
  (numba), started from the linear fit. The cost is periodic in each echo's phase and
  down-weights echoes that disagree with the fit (residuals enter through sin, not linearly).

noise_hz is the standard error of f: sigma * sqrt(S / (S Sxx - Sx^2)) / (2 pi), with
S = sum m_n^2, Sx = sum m_n^2 TE_n, Sxx = sum m_n^2 TE_n^2. With 3+ echoes sigma^2 comes from the
weighted residuals, pooled over a Gaussian neighbourhood (`noise_fwhm_mm`) inside the mask; with
1-2 echoes (no residual degrees of freedom) from the magnitude outside the mask (Rayleigh
background), or, if the background is blank, sigma = 1 magnitude unit (then noise_hz is a
relative reliability only; a warning says so). Both maps are 0 outside the mask.
"""

import logging

import numpy as np
from numba import njit, prange
from scipy import ndimage

from .unwrap import _bbox, _finite_copies, _romeo_spatial, _wrap

logger = logging.getLogger(__name__)


def _checked(phase4d, magnitude, mask, te):
    phase = np.asarray(phase4d, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    magnitude = np.ones(phase.shape, np.float32) if magnitude is None else magnitude
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.ndim == 3:
        magnitude = magnitude[..., None]
    if magnitude.shape != phase.shape:
        raise ValueError(f"magnitude {magnitude.shape} and phase {phase.shape} differ in shape")
    te = np.atleast_1d(np.asarray(te, dtype=np.float64))
    if te.size != phase.shape[3]:
        raise ValueError(f"{te.size} echo times for {phase.shape[3]} echoes")
    mask = np.ones(phase.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != phase.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not match the phase {phase.shape}")
    return phase, magnitude, mask, te


@njit(parallel=True, fastmath=True, cache=True)
def _linear_fit(phase, magnitude, mask, te, field, offset, chi2, gain):
    """Per voxel: slope (rad/s), intercept (rad), sum m^2 r^2 and S / (S Sxx - Sx^2)."""
    nx, ny, nz, ne = phase.shape
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                s = sx = sxx = sy = sxy = 0.0
                for n in range(ne):
                    w = magnitude[x, y, z, n] ** 2
                    s += w
                    sx += w * te[n]
                    sxx += w * te[n] * te[n]
                    sy += w * phase[x, y, z, n]
                    sxy += w * te[n] * phase[x, y, z, n]
                det = s * sxx - sx * sx
                if ne == 1 or det <= 1e-12 * s * sxx:
                    # One echo (or all weight on one): f = phase / TE, no intercept.
                    slope = sxy / sxx if sxx > 0 else 0.0
                    intercept = 0.0
                    g = 1.0 / sxx if sxx > 0 else 0.0
                else:
                    slope = (s * sxy - sx * sy) / det
                    intercept = (sy - slope * sx) / s
                    g = s / det
                r = 0.0
                for n in range(ne):
                    e = phase[x, y, z, n] - intercept - slope * te[n]
                    r += magnitude[x, y, z, n] ** 2 * e * e
                field[x, y, z] = slope
                offset[x, y, z] = intercept
                chi2[x, y, z] = r
                gain[x, y, z] = g


@njit(parallel=True, fastmath=True, cache=True)
def _nonlinear_fit(phase, magnitude, mask, te, field, offset, chi2, iterations, tol):
    """Gauss-Newton on the complex residual; `field`/`offset` hold the start and the result."""
    nx, ny, nz, ne = phase.shape
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z] or ne < 2:
                    continue
                s = sx = sxx = 0.0
                for n in range(ne):
                    w = magnitude[x, y, z, n] ** 2
                    s += w
                    sx += w * te[n]
                    sxx += w * te[n] * te[n]
                det = s * sxx - sx * sx
                if det <= 1e-12 * s * sxx:
                    continue
                omega = field[x, y, z]
                phi0 = offset[x, y, z]
                for _ in range(iterations):
                    # The Gauss-Newton normal matrix is the weighted LS one; the right-hand side
                    # fits sin(residual) instead of the residual.
                    sy = sxy = 0.0
                    for n in range(ne):
                        w = magnitude[x, y, z, n] ** 2
                        e = np.sin(phase[x, y, z, n] - phi0 - omega * te[n])
                        sy += w * e
                        sxy += w * te[n] * e
                    d_omega = (s * sxy - sx * sy) / det
                    d_phi0 = (sy - d_omega * sx) / s
                    omega += d_omega
                    phi0 += d_phi0
                    if abs(d_omega) * te[ne - 1] < tol and abs(d_phi0) < tol:
                        break
                r = 0.0
                for n in range(ne):
                    e = phase[x, y, z, n] - phi0 - omega * te[n]
                    r += magnitude[x, y, z, n] ** 2 * 2 * (1 - np.cos(e))
                field[x, y, z] = omega
                offset[x, y, z] = phi0
                chi2[x, y, z] = r


def _combine(phase4d, magnitude, mask, te, voxel_size, noise_fwhm_mm, iterations):
    """Fit on the mask's bounding box; `iterations` > 0 adds the nonlinear refinement."""
    phase, magnitude, mask, te = _checked(phase4d, magnitude, mask, te)
    field = np.zeros(mask.shape, np.float32)
    noise = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return field, noise
    box = _bbox(mask)
    p, m = _finite_copies(phase[box], magnitude[box])
    k = np.ascontiguousarray(mask[box])
    slope, offset, chi2, gain = (np.zeros(k.shape, np.float32) for _ in range(4))
    _linear_fit(p, m, k, te, slope, offset, chi2, gain)
    if iterations > 0:
        _nonlinear_fit(p, m, k, te, slope, offset, chi2, iterations, 1e-4)
    if te.size >= 3:
        sigma2 = _pooled_sigma2(chi2, k, te.size, noise_fwhm_mm, voxel_size)
    else:
        sigma2 = _background_sigma2(magnitude[..., 0], mask, te.size)
    field[box] = slope / np.float32(2 * np.pi) * k
    noise[box] = np.where(k, np.sqrt(sigma2 * gain) / np.float32(2 * np.pi), 0)
    return field, noise


def _pooled_sigma2(chi2, mask, nechoes, noise_fwhm_mm, voxel_size):
    """Complex noise variance (magnitude units^2) per voxel from the pooled fit residuals."""
    sigma = noise_fwhm_mm / 2.3548 / np.asarray(voxel_size, dtype=float)
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    pooled = ndimage.gaussian_filter(chi2 * mask, sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mask, pooled / (weight * (nechoes - 2)), 0).astype(np.float32)


def _background_sigma2(magnitude, mask, nechoes):
    """Complex noise variance from the magnitude outside the mask (Rayleigh), or 1."""
    magnitude = np.nan_to_num(magnitude, nan=0.0, posinf=0.0, neginf=0.0)
    outside = ~ndimage.binary_dilation(mask, iterations=3) & (magnitude > 0)
    if outside.sum() >= 100:
        # Rayleigh background: E[m^2] = 2 sigma^2.
        return np.float32(np.mean(magnitude[outside].astype(np.float64) ** 2) / 2)
    logger.warning(
        "noise level unknown (%d echo(es), blank background): noise map is relative", nechoes
    )
    return np.float32(1.0)


def linear(
    unwrapped4d_rad,
    *,
    magnitude=None,
    mask=None,
    te,
    voxel_size=(1.0, 1.0, 1.0),
    noise_fwhm_mm=5.0,
):
    """Magnitude^2-weighted linear fit of unwrapped phase over TE -> (field Hz, noise Hz).

    unwrapped4d_rad: (X, Y, Z, N) unwrapped phase (rad); magnitude: same shape (any units);
    mask: bool (X, Y, Z); te: echo times (s); voxel_size: mm (for the noise pooling,
    `noise_fwhm_mm`). Returns float32 maps, 0 outside the mask. See the module docstring.
    """
    return _combine(unwrapped4d_rad, magnitude, mask, te, voxel_size, noise_fwhm_mm, 0)


def nonlinear(
    unwrapped4d_rad,
    *,
    magnitude=None,
    mask=None,
    te,
    voxel_size=(1.0, 1.0, 1.0),
    noise_fwhm_mm=5.0,
    iterations=20,
):
    """Complex nonlinear fit (Liu et al. 2013) of multi-echo phase -> (field Hz, noise Hz).

    Arguments as `linear`; `iterations`: Gauss-Newton steps at most per voxel (it stops at a
    change below 1e-4 rad). The cost is 2 pi periodic in each echo, so once the linear start
    is within about pi / 2 of the optimum in every echo the result does not depend on each
    echo's multiple of 2 pi; unwrapped input puts the start there.
    """
    return _combine(unwrapped4d_rad, magnitude, mask, te, voxel_size, noise_fwhm_mm, iterations)


def mcpc3ds_offset(
    phase4d,
    magnitude4d,
    te,
    *,
    voxel_size=(1.0, 1.0, 1.0),
    mask=None,
    sigma_voxels=(10.0, 10.0, 5.0),
):
    """Receive-phase offset phi0 (rad, 3-D, in [-pi, pi)) by MCPC-3D-S (Eckstein et al. 2018).

    phase4d: wrapped phase (rad), (X, Y, Z, N >= 2); magnitude4d: same shape; te: echo times (s);
    mask: where to unwrap the echo difference (default everywhere). phi0 = phi1 - TE1 * unwrap(
    phi2 - phi1) / (TE2 - TE1), smoothed as the complex exp(i phi0) weighted by the first echo's
    magnitude with a Gaussian of `sigma_voxels` (voxels). Subtract it from every echo with
    `remove_offset`. A single echo gives 0 (the offset cannot be separated from the field).
    """
    phase, magnitude, mask, te = _checked(phase4d, magnitude4d, mask, te)
    if phase.shape[3] < 2:
        return np.zeros(phase.shape[:3], np.float32)
    phase, magnitude = _finite_copies(phase[..., :2], magnitude[..., :2])
    diff = _wrap(phase[..., 1] - phase[..., 0])
    weight = np.minimum(magnitude[..., 0], magnitude[..., 1])
    unwrapped = _romeo_spatial(diff, weight, mask, None, te) * mask
    phi0 = phase[..., 0] - te[0] * unwrapped / (te[1] - te[0])
    z = magnitude[..., 0] * np.exp(1j * phi0)
    smooth = ndimage.gaussian_filter(z.real, sigma_voxels) + 1j * ndimage.gaussian_filter(
        z.imag, sigma_voxels
    )
    return _wrap(np.angle(smooth))


def remove_offset(phase4d, offset):
    """Wrapped phase (rad) with a 3-D offset (rad) subtracted from every echo, float32."""
    phase = np.asarray(phase4d, dtype=np.float32)
    return _wrap(phase - (offset[..., None] if phase.ndim == 4 else offset))


COMBINERS = {"linear": linear, "nonlinear": nonlinear}
