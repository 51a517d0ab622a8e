"""Phase unwrapping of multi-echo phase (rad), (X, Y, Z, N) -> (X, Y, Z, N) float32.

Both methods unwrap two images in space and the rest in time:

1. the first echo, and the wrapped difference of the first two echoes (phase offsets from the
   receive chain cancel in the difference, so it is the smooth image 2 pi f (TE2 - TE1));
   echo 2 = echo 1 + difference, so the two are consistent voxel by voxel;
2. each later echo n is brought to the multiple of 2 pi nearest to the prediction of a
   magnitude^2-weighted linear fit (phase = a + b TE) over echoes 1..n-1, which handles unequal
   echo spacing and any smooth phase offset.

Spatial methods:

- `laplacian`: least-squares unwrapping via the Laplacian of the phase, computed from wrapped
  finite differences (exact wherever neighbours differ by less than pi; the discrete form of
  the sin/cos trick of Schofield & Zhu 2003), weighted to the mask and solved by conjugate
  gradients preconditioned with a DCT Poisson solver (Ghiglia & Romero 1994). The least-
  squares phase is smooth but not congruent to the data where the wrapped gradients are not
  a gradient field (noise, residues), so it is snapped back onto the data:
  unwrapped = wrapped + 2 pi round((ls - wrapped) / 2 pi).
- `romeo`: quality-guided region growing (Dymerska et al. 2021). Every edge between neighbours
  gets a quality, the product of (0.1 + 0.9 c) over phase coherence, multi-echo gradient
  coherence, phase linearity and magnitude coherence (min/max)^2; the best edges are followed
  first from a high-quality seed, with a 256-bin bucket queue (numba).

Both work on the mask's bounding box; the result is 0 outside the mask. The mean over the mask
of echo 1 and of the echo difference is placed in [-pi, pi): a global multiple of 2 pi cannot be
known from phase alone (it is a constant field of 1 / (TE2 - TE1) Hz, harmonic, and removed by
background field removal).
"""

import logging
import math

import numpy as np
import scipy.fft
from numba import njit, prange

from .phase import wrap as _wrap

logger = logging.getLogger(__name__)

TWO_PI = 2 * np.pi
_NBINS = 256


def _bbox(mask, margin=1):
    """Slices of the bounding box of `mask` grown by `margin` voxels (inside the grid)."""
    index = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
        for i, n in zip(index, mask.shape, strict=True)
    )


def _checked(phase4d, magnitude, mask, te):
    phase = np.asarray(phase4d, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
    if magnitude is None:
        magnitude = np.ones(phase.shape, dtype=np.float32)
    magnitude = np.asarray(magnitude, dtype=np.float32)
    if magnitude.ndim == 3:
        magnitude = magnitude[..., None]
    if magnitude.shape != phase.shape:
        raise ValueError(f"magnitude {magnitude.shape} and phase {phase.shape} differ in shape")
    mask = np.ones(phase.shape[:3], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    te = np.atleast_1d(np.asarray(te, dtype=np.float64))
    if te.size != phase.shape[3]:
        raise ValueError(f"{te.size} echo times for {phase.shape[3]} echoes")
    return phase, magnitude, mask, te


def _finite_copies(phase, magnitude):
    """Contiguous float32 copies with non-finite voxels (in either) set to 0 (missing data)."""
    phase = np.array(phase, dtype=np.float32)
    magnitude = np.array(magnitude, dtype=np.float32)
    missing = ~(np.isfinite(phase) & np.isfinite(magnitude))
    if missing.any():
        phase[missing] = 0
        magnitude[missing] = 0
    return phase, magnitude


def _center(unwrapped, mask):
    """Shift by the multiple of 2 pi that puts the mean over the mask in [-pi, pi)."""
    mean = float(np.mean(unwrapped[mask])) if mask.any() else 0.0
    return unwrapped - np.float32(TWO_PI * np.floor((mean + np.pi) / TWO_PI))


def _multi_echo(spatial, phase4d, magnitude, mask, te):
    """Unwrap echo 1 and the echo 1-2 difference with `spatial`, later echoes in time."""
    phase, magnitude, mask, te = _checked(phase4d, magnitude, mask, te)
    out = np.zeros(phase.shape, dtype=np.float32)
    if not mask.any():
        return out
    box = _bbox(mask)
    p, m = _finite_copies(phase[box], magnitude[box])
    k = np.ascontiguousarray(mask[box])
    result = np.zeros(p.shape, dtype=np.float32)
    first = np.ascontiguousarray(p[..., 0])
    second = np.ascontiguousarray(p[..., 1]) if p.shape[3] > 1 else None
    result[..., 0] = _center(spatial(first, np.ascontiguousarray(m[..., 0]), k, second, te), k)
    if p.shape[3] > 1:
        diff = _wrap(p[..., 1] - p[..., 0])
        # The difference's magnitude is the weaker echo's (its noise dominates the difference).
        dmag = np.minimum(m[..., 0], m[..., 1])
        result[..., 1] = result[..., 0] + _center(spatial(diff, dmag, k, None, te), k)
    if p.shape[3] > 2:
        _temporal(result, p, m, k, te.astype(np.float32))
    result *= k[..., None]
    out[box] = result
    return out


@njit(parallel=True, fastmath=True, cache=True)
def _temporal(result, phase, magnitude, mask, te):
    """Echoes 2.. of `result` <- phase + 2 pi k nearest the fit over the echoes before them."""
    nx, ny, nz, ne = phase.shape
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                for n in range(2, ne):
                    s = sx = sxx = sy = sxy = 0.0
                    for j in range(n):
                        w = magnitude[x, y, z, j] ** 2 + 1e-12
                        s += w
                        sx += w * te[j]
                        sxx += w * te[j] * te[j]
                        sy += w * result[x, y, z, j]
                        sxy += w * te[j] * result[x, y, z, j]
                    det = s * sxx - sx * sx
                    slope = (s * sxy - sx * sy) / det
                    intercept = (sy - slope * sx) / s
                    predicted = intercept + slope * te[n]
                    value = phase[x, y, z, n]
                    result[x, y, z, n] = value + 2 * np.pi * round(
                        (predicted - value) / (2 * np.pi)
                    )


# --------------------------------------------------------------------------------------------
# Laplacian (least-squares) unwrapping


def _pairs(axis):
    """Index pairs (lower, upper) of the neighbours along `axis` of a 3-D array."""
    lo = [slice(None)] * 3
    hi = [slice(None)] * 3
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    return tuple(lo), tuple(hi)


def _weighted_divergence(edges, weights, shape):
    """-D^T W e for per-axis edge values `edges` (forward differences) and edge weights."""
    out = np.zeros(shape, dtype=np.float32)
    for axis in range(3):
        lo, hi = _pairs(axis)
        flux = edges[axis] * weights[axis]
        out[lo] += flux
        out[hi] -= flux
    return out


def _poisson_solver(shape, h2):
    """Inverse of the unweighted Neumann Laplacian (DCT-II), zero mean: the preconditioner."""
    eig = np.zeros(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        lam = (2 * np.cos(np.pi * np.arange(n) / n) - 2) * h2[axis]
        eig = eig + lam.reshape([n if a == axis else 1 for a in range(3)]).astype(np.float32)
    eig[0, 0, 0] = 1.0

    def solve(rhs):
        spectrum = scipy.fft.dctn(rhs, type=2, workers=-1) / eig
        spectrum[0, 0, 0] = 0.0
        return scipy.fft.idctn(spectrum, type=2, workers=-1).astype(np.float32)

    return solve


def _laplacian_spatial(
    phase, magnitude, mask, second, te, voxel_size=(1.0, 1.0, 1.0), iterations=100, tol=1e-4
):
    """Weighted least-squares unwrapped phase (rad) of one 3-D wrapped image, snapped to it.

    Minimises sum over edges w (phi_j - phi_i - wrap(p_j - p_i))^2 / h^2 with w the ROMEO
    edge quality (`_edge_bins`, with echo 2 as `second` if given; 0..1) between mask voxels
    and 1e-3 elsewhere (so that noise does not leak in, and the solution outside the mask is a
    smooth fill-in), by conjugate gradients preconditioned with the unweighted DCT Poisson
    solver (the Ghiglia & Romero 1994 scheme).
    """
    h2 = 1.0 / np.asarray(voxel_size, dtype=np.float64) ** 2
    bins = _quality_bins(phase, magnitude, mask, second, te)
    weights, grads = [], []
    for axis in range(3):
        lo, hi = _pairs(axis)
        quality = np.where(bins[axis][lo] > 0, 1 - (bins[axis][lo] - np.float32(1)) / 254, 0)
        weights.append((quality + np.float32(1e-3)).astype(np.float32) * np.float32(h2[axis]))
        grads.append(_wrap(phase[hi] - phase[lo]))
    solve = _poisson_solver(phase.shape, h2)

    def normal(x):  # the weighted Laplacian D^T W D (negative semidefinite as written)
        return _weighted_divergence([np.diff(x, axis=a) for a in range(3)], weights, x.shape)

    rhs = _weighted_divergence(grads, weights, phase.shape)
    x = solve(rhs)
    r = rhs - normal(x)
    z = solve(r)
    d = z.copy()
    rz = float(np.vdot(r, z))
    scale = float(np.linalg.norm(rhs)) or 1.0
    for _ in range(iterations):
        if float(np.linalg.norm(r)) < tol * scale:
            break
        q = normal(d)
        alpha = rz / float(np.vdot(d, q))
        x += np.float32(alpha) * d
        r -= np.float32(alpha) * q
        z = solve(r)
        rz, rz_old = float(np.vdot(r, z)), rz
        d = z + np.float32(rz / rz_old) * d
    return phase + np.float32(TWO_PI) * np.round((x - phase) / np.float32(TWO_PI))


def laplacian(phase4d_rad, *, magnitude=None, mask=None, te, voxel_size=(1.0, 1.0, 1.0)):
    """Laplacian (quality-weighted least-squares) unwrapping of multi-echo phase.

    phase4d_rad: wrapped phase (rad), (X, Y, Z, N) or (X, Y, Z); magnitude: same shape (any
    units; weights the temporal step); mask: bool (X, Y, Z); te: echo times (s); voxel_size: mm.
    Returns unwrapped phase (rad), float32, 0 outside the mask, congruent to the input. At most
    100 conjugate-gradient steps per image (to a relative residual of 1e-4).
    """

    def spatial(p, m, k, second, te_):
        return _laplacian_spatial(p, m, k, second, te_, voxel_size)

    return _multi_echo(spatial, phase4d_rad, magnitude, mask, te)


# --------------------------------------------------------------------------------------------
# ROMEO-style quality-guided region growing


@njit(inline="always")
def _wrapf(x):
    return x - 2 * np.pi * math.floor((x + np.pi) / (2 * np.pi))


@njit(parallel=True, fastmath=True, cache=True)
def _edge_bins(phase, second, ratio, use_second, magnitude, mask):
    """Edge costs (uint8): 0 = no edge; 1 (best) .. 255 (worst), for +x, +y, +z neighbours.

    quality = prod(0.1 + 0.9 c) over phase coherence 1 - |dphi|/pi, gradient coherence with
    the second image 1 - |dphi - dphi2 * ratio| (ratio = TE1/TE2), phase linearity (second
    differences along the edge at both ends) and magnitude coherence (min/max)^2.
    """
    nx, ny, nz = phase.shape
    bins = np.zeros((3, nx, ny, nz), dtype=np.uint8)
    for x in prange(nx):
        for y in range(ny):
            for z in range(nz):
                if not mask[x, y, z]:
                    continue
                for d in range(3):
                    dx, dy, dz = (1, 0, 0) if d == 0 else ((0, 1, 0) if d == 1 else (0, 0, 1))
                    x1, y1, z1 = x + dx, y + dy, z + dz
                    if x1 >= nx or y1 >= ny or z1 >= nz or not mask[x1, y1, z1]:
                        continue
                    dphi = _wrapf(phase[x1, y1, z1] - phase[x, y, z])
                    q = 0.1 + 0.9 * (1 - abs(dphi) / np.pi)
                    if use_second:
                        d2 = _wrapf(second[x1, y1, z1] - second[x, y, z])
                        q *= 0.1 + 0.9 * max(0.0, 1 - abs(dphi - d2 * ratio))
                    lin = 1.0
                    x0, y0, z0 = x - dx, y - dy, z - dz
                    if x0 >= 0 and y0 >= 0 and z0 >= 0 and mask[x0, y0, z0]:
                        back = _wrapf(phase[x, y, z] - phase[x0, y0, z0])
                        lin *= max(0.0, 1 - abs(_wrapf(dphi - back)) / np.pi)
                    x2, y2, z2 = x1 + dx, y1 + dy, z1 + dz
                    if x2 < nx and y2 < ny and z2 < nz and mask[x2, y2, z2]:
                        ahead = _wrapf(phase[x2, y2, z2] - phase[x1, y1, z1])
                        lin *= max(0.0, 1 - abs(_wrapf(ahead - dphi)) / np.pi)
                    q *= 0.1 + 0.9 * lin
                    m0, m1 = magnitude[x, y, z], magnitude[x1, y1, z1]
                    big = max(m0, m1)
                    c = (min(m0, m1) / big) ** 2 if big > 0 else 0.0
                    q *= 0.1 + 0.9 * c
                    bins[d, x, y, z] = 1 + int(254 * (1 - q))
    return bins


@njit(cache=True)
def _grow(phase, bins, mask):
    """Unwrap `phase` in place along the best edges first, from the best seeds (bucket queue)."""
    nx, ny, nz = phase.shape
    stride = (ny * nz, nz, 1)
    flat = phase.ravel()
    inside = mask.ravel()
    cost = bins.reshape(3, nx * ny * nz)
    nvox = nx * ny * nz
    visited = np.zeros(nvox, dtype=np.bool_)
    capacity = 0
    for d in range(3):
        for v in range(nvox):
            if cost[d, v] > 0:
                capacity += 1
    item = np.empty(capacity + 1, dtype=np.int64)
    nxt = np.empty(capacity + 1, dtype=np.int64)
    head = np.full(_NBINS, -1, dtype=np.int64)

    # Seed score: summed quality of a voxel's edges; seeds are taken best first.
    score = np.zeros(nvox, dtype=np.int64)
    for d in range(3):
        for v in range(nvox):
            c = cost[d, v]
            if c > 0:
                score[v] += 256 - c
                score[v + stride[d]] += 256 - c
    # The best voxel first; only if the mask has several components are the rest sorted.
    order = np.full(1, np.argmax(np.where(inside, score, -1)), dtype=np.int64)
    remaining = np.count_nonzero(inside)
    sorted_all = False

    used = 0
    while remaining > 0 and not (sorted_all and order.size == 0):
        if order.size == 0:
            order = np.argsort(-score)
            sorted_all = True
        seed = order[0]
        order = order[1:]
        if not inside[seed] or visited[seed]:
            continue
        visited[seed] = True
        remaining -= 1
        current = _NBINS
        v = seed
        while True:
            coords = (v // stride[0], (v // stride[1]) % ny, v % nz)
            shape = (nx, ny, nz)
            for d in range(3):
                # Push edges from v to unvisited neighbours: +d and -d.
                if coords[d] + 1 < shape[d]:
                    c = cost[d, v]
                    if c > 0 and not visited[v + stride[d]]:
                        item[used] = v * 6 + d
                        nxt[used] = head[c]
                        head[c] = used
                        used += 1
                        current = min(current, c)
                if coords[d] > 0:
                    c = cost[d, v - stride[d]]
                    if c > 0 and not visited[v - stride[d]]:
                        item[used] = v * 6 + 3 + d
                        nxt[used] = head[c]
                        head[c] = used
                        used += 1
                        current = min(current, c)
            # Pop the best edge whose far end is still unvisited.
            v = -1
            while current < _NBINS:
                slot = head[current]
                if slot < 0:
                    current += 1
                    continue
                head[current] = nxt[slot]
                source, d = item[slot] // 6, item[slot] % 6
                target = source + stride[d] if d < 3 else source - stride[d - 3]
                if visited[target]:
                    continue
                flat[target] -= 2 * np.pi * round((flat[target] - flat[source]) / (2 * np.pi))
                visited[target] = True
                remaining -= inside[target]
                v = target
                break
            if v < 0:
                break
    return visited.reshape(nx, ny, nz)


def _quality_bins(phase, magnitude, mask, second, te):
    """`_edge_bins` of one image, with the gradient coherence to `second` (echo 2) if given."""
    if second is None:
        return _edge_bins(phase, phase, 0.0, False, magnitude, mask)
    return _edge_bins(phase, second, float(te[0] / te[1]), True, magnitude, mask)


def _romeo_spatial(phase, magnitude, mask, second, te):
    bins = _quality_bins(phase, magnitude, mask, second, te)
    out = np.array(phase, dtype=np.float32, order="C")  # a contiguous copy: _grow works on it
    _grow(out, bins, np.ascontiguousarray(mask))
    return out


def romeo(phase4d_rad, *, magnitude=None, mask=None, te, voxel_size=(1.0, 1.0, 1.0)):
    """ROMEO-style quality-guided unwrapping of multi-echo phase.

    phase4d_rad: wrapped phase (rad), (X, Y, Z, N) or (X, Y, Z); magnitude: same shape (any
    units); mask: bool (X, Y, Z); te: echo times (s); voxel_size: mm (unused: edge qualities are
    dimensionless). Returns unwrapped phase (rad), float32, 0 outside the mask.
    """
    return _multi_echo(_romeo_spatial, phase4d_rad, magnitude, mask, te)


def voxel_quality(phase4d, *, magnitude=None, te=None, mask=None):
    """ROMEO voxel quality in [0, 1]: mean quality of the edges to the 6 neighbours.

    phase4d: wrapped phase (rad), (X, Y, Z[, N]); magnitude: same shape; te: echo times (s).
    With two or more echoes and `te`, the gradient coherence between echoes 1 and 2 enters;
    without `te` only the first echo is used. Voxels at the grid border count missing
    neighbours as quality 0.
    """
    nechoes = np.shape(phase4d)[3] if np.ndim(phase4d) == 4 else 1
    use_second = nechoes > 1 and te is not None
    if te is None:
        te = np.ones(nechoes)
    phase, magnitude, mask, te = _checked(phase4d, magnitude, mask, te)
    phase, magnitude = _finite_copies(phase[..., :2], magnitude[..., :2])  # all that is used
    ratio = float(te[0] / te[1]) if use_second else 0.0
    first = np.ascontiguousarray(phase[..., 0])
    second = np.ascontiguousarray(phase[..., 1]) if use_second else first
    bins = _edge_bins(
        first, second, ratio, use_second, np.ascontiguousarray(magnitude[..., 0]), mask
    )
    quality = np.where(bins > 0, 1 - (bins.astype(np.float32) - 1) / 254, 0).astype(np.float32)
    total = quality.sum(axis=0)
    for d in range(3):
        index = [slice(None)] * 3
        index[d] = slice(1, None)
        lower = [slice(None)] * 3
        lower[d] = slice(None, -1)
        total[tuple(index)] += quality[d][tuple(lower)]
    return total / 6


UNWRAPPERS = {"romeo": romeo, "laplacian": laplacian}
