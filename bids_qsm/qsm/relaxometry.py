"""R2* (1/s) from multi-echo magnitude: m_n = S0 exp(-R2* TE_n).

- `loglinear`: weighted least squares of log magnitude over TE. The log of a magnitude with
  noise sigma has standard deviation sigma / m, so the inverse-variance weights are m^2.
- `arlo`: auto-regression on linear operations (Pei et al. 2015): with equally spaced echoes
  (spacing dt), Simpson integrals s_i = dt/3 (m_i + 4 m_{i+1} + m_{i+2}) and differences
  d_i = m_i - m_{i+2} satisfy s_i = T2* d_i, solved in closed form in the least-squares sense
  (accounting for the Simpson error). Needs >= 3 equally spaced echoes (ValueError otherwise).

Results are clipped to [0, R2STAR_MAX] 1/s: R2* of brain tissue is about 10-60 1/s at 3 T and
iron-rich or haemorrhagic tissue rarely exceeds a few hundred; negative values (noise, inflow)
and values beyond 1000 1/s (signal gone after the first echo) carry no information. 0 outside
the mask and where the magnitude is not positive.
"""

import logging

import numpy as np
from numba import njit, prange

from .unwrap import _bbox

logger = logging.getLogger(__name__)

R2STAR_MAX = 1000.0  # 1/s


def _checked(magnitude4d, te, mask):
    mag = np.asarray(magnitude4d, dtype=np.float32)
    if mag.ndim != 4:
        raise ValueError(f"R2* needs a 4-D multi-echo magnitude, not shape {mag.shape}")
    te = np.atleast_1d(np.asarray(te, dtype=np.float64))
    if te.size != mag.shape[3] or te.size < 2:
        raise ValueError(f"R2* needs >= 2 echoes with one TE each ({te.size} TEs, {mag.shape})")
    mask = np.ones(mag.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != mag.shape[:3]:
        raise ValueError(f"mask {mask.shape} does not match the magnitude {mag.shape}")
    return mag, te, mask


def _on_box(fit, mag, mask):
    """Run `fit(magnitude, mask) -> r2star` on the mask's bounding box (NaN -> 0 there)."""
    out = np.zeros(mask.shape, np.float32)
    if mask.any():
        box = _bbox(mask)
        cropped = np.nan_to_num(np.array(mag[box], dtype=np.float32), nan=0.0, posinf=0.0)
        out[box] = fit(cropped, np.ascontiguousarray(mask[box]))
    return out


@njit(parallel=True, fastmath=True, cache=True)
def _loglinear(mag, te, mask, out, rmax):
    nx, ny, nz, ne = mag.shape
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                s = sx = sxx = sy = sxy = 0.0
                for n in range(ne):
                    m = mag[x, y, z, n]
                    if m <= 0:
                        continue
                    w = m * m
                    v = np.log(m)
                    s += w
                    sx += w * te[n]
                    sxx += w * te[n] * te[n]
                    sy += w * v
                    sxy += w * te[n] * v
                det = s * sxx - sx * sx
                if s <= 0 or det <= 1e-12 * s * sxx:
                    continue
                r2 = -(s * sxy - sx * sy) / det
                out[x, y, z] = min(max(r2, 0.0), rmax)


def loglinear(magnitude4d, *, te, mask=None):
    """Weighted log-linear R2* fit (1/s), float32 3-D, clipped to [0, 1000], 0 outside mask.

    magnitude4d: (X, Y, Z, N >= 2) magnitude (any units); te: echo times (s); mask: bool.
    """
    mag, te, mask = _checked(magnitude4d, te, mask)

    def fit(m, k):
        out = np.zeros(k.shape, np.float32)
        _loglinear(m, te, k, out, R2STAR_MAX)
        return out

    return _on_box(fit, mag, mask)


def arlo(magnitude4d, *, te, mask=None):
    """ARLO R2* (1/s), float32 3-D, clipped to [0, 1000], 0 outside the mask.

    magnitude4d: (X, Y, Z, N >= 3); te: equally spaced echo times (s) (relative tolerance
    1e-3); mask: bool. Raises ValueError for fewer than 3 echoes or unequal spacing: use
    `loglinear` there.
    """
    mag, te, mask = _checked(magnitude4d, te, mask)
    spacing = np.diff(te)
    if te.size < 3 or not np.allclose(spacing, spacing[0], rtol=1e-3):
        raise ValueError(
            f"ARLO needs >= 3 equally spaced echoes (TE = {te.tolist()} s); use 'loglinear'"
        )
    dt = spacing[0]

    def fit(m, k):
        out = np.zeros(k.shape, np.float32)
        _arlo(m, dt, k, out, R2STAR_MAX)
        return out

    return _on_box(fit, mag, mask)


@njit(parallel=True, fastmath=True, cache=True)
def _arlo(mag, dt, mask, out, rmax):
    nx, ny, nz, ne = mag.shape
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                ss = sd = dd = 0.0
                for n in range(ne - 2):
                    m0, m1, m2 = mag[x, y, z, n], mag[x, y, z, n + 1], mag[x, y, z, n + 2]
                    s = dt / 3 * (m0 + 4 * m1 + m2)
                    d = m0 - m2
                    ss += s * s
                    sd += s * d
                    dd += d * d
                den = ss + dt / 3 * sd
                if den <= 0:
                    continue
                r2 = (dt / 3 * dd + sd) / den
                out[x, y, z] = min(max(r2, 0.0), rmax)


def t2star_from_r2star(r2star):
    """T2* (s) = 1 / R2* (R2* in 1/s); 0 where R2* is 0 (no decay measured / outside mask)."""
    r2star = np.asarray(r2star, dtype=np.float32)
    out = np.zeros(r2star.shape, np.float32)
    positive = r2star > 0
    out[positive] = 1.0 / r2star[positive]
    return out


RELAXOMETRY = {"loglinear": loglinear, "arlo": arlo}
