"""Phase ingest: vendor scaling -> radians, sign convention, real/imaginary -> magnitude/phase.

BIDS phase images come as radians (`Units: rad`) or as "arbitrary" numbers; Siemens stores
12-bit integers, either 0..4095 (radians = v / 4095 * 2 pi - pi) or -4096..4095
(radians = v * pi / 4096). Anything else in arbitrary units is rescaled from its stored range
(min..max -> -pi..pi) with a logged warning, since the mapping is a guess. Non-finite voxels
(NaN, Inf) are missing data: they become 0, never random values, and `finite_mask` tells the
caller where they were.
"""

import logging

import numpy as np
from numba import njit, prange

logger = logging.getLogger(__name__)

PHASE_UNITS = ("auto", "rad", "arbitrary")
PHASE_SIGNS = (1, -1)

# Siemens 12-bit phase: both ranges span 4096 codes = one full turn.
_SIEMENS_UNSIGNED = (0.0, 4095.0)
_SIEMENS_SIGNED = (-4096.0, 4095.0)
_RAD_TOLERANCE = 1e-3  # rad; float round-off of a converter writing +-pi


def wrap(phase):
    """Wrap phase (rad) into [-pi, pi), float32 (a new array)."""
    phase = np.asarray(phase, dtype=np.float32)
    out = np.empty(phase.shape, dtype=np.float32)
    _wrap_kernel(phase.reshape(-1), out.reshape(-1))
    return out


@njit(parallel=True, fastmath=False, cache=True)
def _wrap_kernel(phase, out):
    # float64 inside: exact enough that float32 round-off never lands on +pi unwrapped.
    for i in prange(phase.size):
        value = np.float64(phase[i])
        wrapped = value - 2 * np.pi * np.floor((value + np.pi) / (2 * np.pi))
        result = np.float32(wrapped)
        if result >= np.float32(np.pi):
            result = -np.float32(np.pi)
        out[i] = result


def finite_mask(*arrays):
    """True where every array is finite (NaN/Inf are missing data); arrays broadcast together."""
    out = np.isfinite(arrays[0])
    for a in arrays[1:]:
        out = out & np.isfinite(a)
    return out


def _siemens_range(values, vmin, vmax, lo, hi):
    """Whether finite `values` (extremes vmin, vmax) are integers in the Siemens range [lo, hi]."""
    # A real phase image spans most of the turn; a handful of codes is not Siemens scaling.
    if not (vmin >= lo and vmax <= hi and vmax - vmin > 2048):
        return False
    return bool(np.all(np.mod(values, 1) == 0))


def scale_phase(phase, *, units="auto"):
    """Phase image in any BIDS convention -> float32 radians in [-pi, pi).

    phase: array of any shape; units: "rad" (wrap only), "arbitrary" (Siemens integer ranges
    0..4095 and -4096..4095 are recognised and converted exactly; anything else is rescaled
    min..max -> -pi..pi with a warning) or "auto" (radians when every value lies in [-pi, pi],
    otherwise as "arbitrary"). NaN/Inf voxels become 0 (missing; see `finite_mask`).

    >>> scale_phase(np.array([0, 2048, 4095]), units="arbitrary").round(3).tolist()
    [-3.142, 0.0, -3.142]
    """
    if units not in PHASE_UNITS:
        raise ValueError(f"phase units must be one of {PHASE_UNITS}, not {units!r}")
    phase = np.asarray(phase)
    finite = finite_mask(phase)
    complete = bool(finite.all())
    # float32 holds the Siemens codes exactly; whole-array arithmetic when nothing is missing.
    values = (phase if complete else phase[finite]).astype(np.float32, copy=False)
    if values.size == 0:
        logger.warning("phase image has no finite values; using 0 rad everywhere")
        return np.zeros(phase.shape, dtype=np.float32)
    if not complete:
        logger.warning("phase image has %d non-finite voxels; set to 0 rad", (~finite).sum())
    vmin, vmax = float(values.min()), float(values.max())

    if units == "auto":
        in_rad = vmin >= -np.pi - _RAD_TOLERANCE and vmax <= np.pi + _RAD_TOLERANCE
        units = "rad" if in_rad else "arbitrary"
        if in_rad and vmax - vmin < np.pi:
            logger.warning(
                "phase spans only %.3g rad; read as radians (pass units='arbitrary' if it is not)",
                vmax - vmin,
            )

    if units == "rad" and vmin >= -np.pi and vmax < np.pi:
        radians = values  # already wrapped: a copy, no arithmetic
        return np.array(radians) if complete else _scatter(radians, finite)
    if units == "rad":
        radians = values
    elif _siemens_range(values, vmin, vmax, *_SIEMENS_UNSIGNED):
        radians = values * np.float32(2 * np.pi / 4095) - np.float32(np.pi)
    elif _siemens_range(values, vmin, vmax, *_SIEMENS_SIGNED):
        radians = values * np.float32(np.pi / 4096)
    else:
        logger.warning(
            "phase in arbitrary units rescaled from its stored range [%.6g, %.6g] to [-pi, pi]",
            vmin,
            vmax,
        )
        span = vmax - vmin if vmax > vmin else 1.0
        radians = (values - np.float32(vmin)) * np.float32(2 * np.pi / span) - np.float32(np.pi)
    return wrap(radians) if complete else _scatter(wrap(radians), finite)


def _scatter(values, where):
    out = np.zeros(where.shape, dtype=np.float32)
    out[where] = values
    return out


def apply_phase_sign(phase, sign=1):
    """Multiply phase (rad) by `sign` (+1 or -1) for scanners with the opposite convention.

    Our convention: a positive (paramagnetic) field makes phase grow with echo time.
    """
    if sign not in PHASE_SIGNS:
        raise ValueError(f"phase sign must be +1 or -1, not {sign!r}")
    phase = np.asarray(phase, dtype=np.float32)
    return phase if sign == 1 else wrap(-phase)


def complex_to_polar(real, imag):
    """Real and imaginary parts (any units) -> (magnitude, phase in rad [-pi, pi)), float32.

    Non-finite voxels become magnitude 0 and phase 0.
    """
    real = np.asarray(real, dtype=np.float32)
    imag = np.asarray(imag, dtype=np.float32)
    finite = finite_mask(real, imag)
    z = np.where(finite, real + 1j * imag, 0).astype(np.complex64)
    return np.abs(z).astype(np.float32), wrap(np.angle(z))
