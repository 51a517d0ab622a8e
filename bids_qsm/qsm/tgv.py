"""TGV-QSM: total generalised variation dipole inversion with a Laplacian data term.

Model (Langkammer et al., NeuroImage 2015; Bredies et al., ISMRM 2014), on a grid of spacing h:

    min over chi, w, phi of   1/2 ||phi||^2_mask + alpha1 ||grad chi - w||_1 + alpha0 ||E w||_1
    subject to                Wave chi - Lap phi = Lap phi0     in mask0,

where phi0 is the measured (local) phase in rad, phi a correction to it (penalised inside the
mask, free outside, where it absorbs fields of sources outside the mask), Lap the 7-point
Laplacian, E the symmetrised gradient and Wave = (1/3) Lap - (b.grad)^2 the dipole operator
written with second differences, so that everything is local and no FFT is needed:

    (b.grad)^2 ~ -B,   B = (b.D+)^T (b.D+),   D+ the forward differences along the voxel axes,

so Wave = Lap/3 + B has the symbol -(1/3)|delta|^2 + |b.delta|^2 (delta_d = (e^{i theta_d}-1)/h_d),
the discrete twin of |k|^2 (b.k)^2/|k|^2 - |k|^2/3 for any (oblique) unit vector b in voxel axes.
mask0 is the mask eroded by the stencil's footprint (faces and edges).

Discretisation: every field is zero outside the box (a ghost layer of zeros that is never
written), grad and E use forward differences, div = -grad^T and div2 = -E^T are their exact
negative adjoints for any (anisotropic) spacing; E w is stored as (xx, xy, xz, yy, yz, zz) with
the Frobenius inner product (off-diagonal entries count twice).

Solver: Chambolle-Pock primal-dual, one numba sweep per iteration that fuses the dual and the
primal step slab by slab (`_iterate`), with diagonal (Pock-Chambolle 2011) step sizes per block
(`diagonal_steps`, the default), or tau = sigma = 1/||K|| with ||K|| the supremum of the block
operator's Fourier symbol (`operator_norm`); the test suite checks both bounds by power
iteration on the operators.
The spacing is made dimensionless internally (h / prod(h)^(1/3), alphas rescaled), an exact change
of variables that keeps the operator blocks balanced at every resolution.
"""

import logging
import math

import numba
import numpy as np
from numba import njit, prange
from scipy import ndimage

from .units import GAMMA_BAR_HZ_PER_T
from .unwrap import _bbox

logger = logging.getLogger(__name__)

# The last index is unsigned in every stencil: numba then emits no negative-index wrap-around,
# whose check on a loop start read from memory stops the inner loop from vectorising.
_U1 = np.uint64(1)

# fastmath without "reassoc": a kernel numba compiles afresh and the one it loads from its cache
# may reassociate sums differently, and the maps of a rerun would then differ in the last bits.
_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}

# ----------------------------------------------------------------------------------------------
# Pointwise stencils, shared by the fused kernels and by the operators the tests check.


@njit(inline="always", fastmath=_FASTMATH)
def _lap_at(u, i, j, k, l0, l1, l2):
    c = u[i, j, k]
    return (
        (u[i - 1, j, k] + u[i + 1, j, k] - 2 * c) * l0
        + (u[i, j - 1, k] + u[i, j + 1, k] - 2 * c) * l1
        + (u[i, j, k - _U1] + u[i, j, k + _U1] - 2 * c) * l2
    )


@njit(inline="always", fastmath=_FASTMATH)
def _wave_at(u, i, j, k, wc):
    """13-point stencil: wc = (center, face0, face1, face2, edge01, edge02, edge12); the edge
    coefficient multiplies the two neighbours at (+d, -e) and (-d, +e)."""
    return (
        wc[0] * u[i, j, k]
        + wc[1] * (u[i - 1, j, k] + u[i + 1, j, k])
        + wc[2] * (u[i, j - 1, k] + u[i, j + 1, k])
        + wc[3] * (u[i, j, k - _U1] + u[i, j, k + _U1])
        + wc[4] * (u[i + 1, j - 1, k] + u[i - 1, j + 1, k])
        + wc[5] * (u[i + 1, j, k - _U1] + u[i - 1, j, k + _U1])
        + wc[6] * (u[i, j + 1, k - _U1] + u[i, j - 1, k + _U1])
    )


@njit(inline="always", fastmath=_FASTMATH)
def _grad_at(u, i, j, k, r0, r1, r2):
    c = u[i, j, k]
    return (u[i + 1, j, k] - c) * r0, (u[i, j + 1, k] - c) * r1, (u[i, j, k + _U1] - c) * r2


@njit(inline="always", fastmath=_FASTMATH)
def _symgrad_at(w, i, j, k, r0, r1, r2):
    """(xx, xy, xz, yy, yz, zz) of E w = (grad w + grad w^T) / 2, forward differences."""
    wx, wy, wz = w[0, i, j, k], w[1, i, j, k], w[2, i, j, k]
    dx0 = (w[0, i + 1, j, k] - wx) * r0
    dy0 = (w[0, i, j + 1, k] - wx) * r1
    dz0 = (w[0, i, j, k + _U1] - wx) * r2
    dx1 = (w[1, i + 1, j, k] - wy) * r0
    dy1 = (w[1, i, j + 1, k] - wy) * r1
    dz1 = (w[1, i, j, k + _U1] - wy) * r2
    dx2 = (w[2, i + 1, j, k] - wz) * r0
    dy2 = (w[2, i, j + 1, k] - wz) * r1
    dz2 = (w[2, i, j, k + _U1] - wz) * r2
    half = np.float32(0.5)
    return dx0, half * (dy0 + dx1), half * (dz0 + dx2), dy1, half * (dz1 + dy2), dz2


@njit(inline="always", fastmath=_FASTMATH)
def _div_at(p, i, j, k, r0, r1, r2):
    return (
        (p[0, i, j, k] - p[0, i - 1, j, k]) * r0
        + (p[1, i, j, k] - p[1, i, j - 1, k]) * r1
        + (p[2, i, j, k] - p[2, i, j, k - _U1]) * r2
    )


@njit(inline="always", fastmath=_FASTMATH)
def _div2_at(q, i, j, k, c0, c1, c2, r0, r1, r2):
    """One component d of div2 q: sum_e D-_e q[d, e], with q[d, e] stored at index c_e."""
    return (
        (q[c0, i, j, k] - q[c0, i - 1, j, k]) * r0
        + (q[c1, i, j, k] - q[c1, i, j - 1, k]) * r1
        + (q[c2, i, j, k] - q[c2, i, j, k - _U1]) * r2
    )


@njit(inline="always", fastmath=_FASTMATH)
def _dual_slab(i, chi_, phi_, w_, eta, p, q, lap_phi0, labels, steps, alpha1, alpha0, r, wc, rows):
    """Slab i of the dual step: eta += s_eta m0 (Wave chi_ - Lap phi_ - Lap phi0); p, q:
    projected ascent (m1 = mask). steps: (s_eta, s_p, s_q, t_chi, t_phi, t_w); rows: the k
    range of each (i, j) row to sweep (`_row_bounds`)."""
    ny = chi_.shape[1]
    r0, r1, r2 = r[0], r[1], r[2]
    l0, l1, l2 = r0 * r0, r1 * r1, r2 * r2
    s_eta, s_p, s_q = steps[0], steps[1], steps[2]
    ia1 = np.float32(1.0) / alpha1
    ia0 = np.float32(1.0) / alpha0
    one = np.float32(1.0)
    for j in range(1, ny - 1):
        for kk in range(rows[0, i, j], rows[1, i, j]):
            k = np.uint64(kk)
            lab = labels[i, j, k]
            m1 = np.float32(lab & 1)
            m0 = np.float32((lab >> 1) & 1)
            stencils = _wave_at(chi_, i, j, k, wc) - _lap_at(phi_, i, j, k, l0, l1, l2)
            resid = stencils - lap_phi0[i, j, k]
            eta[i, j, k] += s_eta * m0 * resid

            d0, d1, d2 = _grad_at(chi_, i, j, k, r0, r1, r2)
            s1 = s_p * m1
            g0 = p[0, i, j, k] + s1 * (d0 - w_[0, i, j, k])
            g1 = p[1, i, j, k] + s1 * (d1 - w_[1, i, j, k])
            g2 = p[2, i, j, k] + s1 * (d2 - w_[2, i, j, k])
            scale = max(one, math.sqrt(g0 * g0 + g1 * g1 + g2 * g2) * ia1)
            p[0, i, j, k] = g0 / scale
            p[1, i, j, k] = g1 / scale
            p[2, i, j, k] = g2 / scale

            exx, exy, exz, eyy, eyz, ezz = _symgrad_at(w_, i, j, k, r0, r1, r2)
            s2 = s_q * m1
            qxx = q[0, i, j, k] + s2 * exx
            qxy = q[1, i, j, k] + s2 * exy
            qxz = q[2, i, j, k] + s2 * exz
            qyy = q[3, i, j, k] + s2 * eyy
            qyz = q[4, i, j, k] + s2 * eyz
            qzz = q[5, i, j, k] + s2 * ezz
            norm2 = qxx * qxx + qyy * qyy + qzz * qzz + 2 * (qxy * qxy + qxz * qxz + qyz * qyz)
            scale = max(one, math.sqrt(norm2) * ia0)
            q[0, i, j, k] = qxx / scale
            q[1, i, j, k] = qxy / scale
            q[2, i, j, k] = qxz / scale
            q[3, i, j, k] = qyy / scale
            q[4, i, j, k] = qyz / scale
            q[5, i, j, k] = qzz / scale


@njit(inline="always", fastmath=_FASTMATH)
def _primal_slab(i, chi, chi_, phi, phi_, w, w_, eta, p, q, labels, steps, r, wc, rows):
    """Slab i of the primal step: descent on chi, w; prox of 1/2||phi||^2 in the mask;
    extrapolation x_ = 2 x_new - x. eta, p and q are zero outside mask0 / mask (they never leave
    it), so no mask is needed except for the prox. (No reductions here: they stop the inner loop
    from vectorising.)"""
    ny = chi.shape[1]
    r0, r1, r2 = r[0], r[1], r[2]
    l0, l1, l2 = r0 * r0, r1 * r1, r2 * r2
    t_chi, t_phi, t_w = steps[3], steps[4], steps[5]
    damp = np.float32(1.0) / (np.float32(1.0) + t_phi)
    two = np.float32(2.0)
    for j in range(1, ny - 1):
        for kk in range(rows[0, i, j], rows[1, i, j]):
            k = np.uint64(kk)
            m1 = np.float32(labels[i, j, k] & 1)
            old = chi[i, j, k]
            new = old + t_chi * (_div_at(p, i, j, k, r0, r1, r2) - _wave_at(eta, i, j, k, wc))
            chi[i, j, k] = new
            chi_[i, j, k] = two * new - old

            old = phi[i, j, k]
            factor = m1 * damp + (np.float32(1.0) - m1)
            new = (old + t_phi * _lap_at(eta, i, j, k, l0, l1, l2)) * factor
            phi[i, j, k] = new
            phi_[i, j, k] = two * new - old

            div_q0 = _div2_at(q, i, j, k, 0, 1, 2, r0, r1, r2)
            div_q1 = _div2_at(q, i, j, k, 1, 3, 4, r0, r1, r2)
            div_q2 = _div2_at(q, i, j, k, 2, 4, 5, r0, r1, r2)
            old = w[0, i, j, k]
            new = old + t_w * (p[0, i, j, k] + div_q0)
            w[0, i, j, k] = new
            w_[0, i, j, k] = two * new - old
            old = w[1, i, j, k]
            new = old + t_w * (p[1, i, j, k] + div_q1)
            w[1, i, j, k] = new
            w_[1, i, j, k] = two * new - old
            old = w[2, i, j, k]
            new = old + t_w * (p[2, i, j, k] + div_q2)
            w[2, i, j, k] = new
            w_[2, i, j, k] = two * new - old


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _iterate(
    chi, chi_, phi, phi_, w, w_, eta, p, q, lap_phi0, labels, steps, a1, a0, r, wc, chunks, rows
):
    """One primal-dual iteration in a single sweep per thread (the two steps fused in time).

    The primal step on slab i needs the new duals on slabs i-1..i+1, and the dual step on slab
    i reads the extrapolated primals on slabs i-1..i+1, so each thread sweeps its run of slabs
    doing dual(i) then primal(i-1): every array streams through the cache once per iteration
    instead of twice. A run's first and last primal slabs read duals of the neighbouring runs
    (written concurrently), so they wait for a second pass. chunks: slab starts, ascending,
    from 1 to nx - 1 (the ghost layers are never written); rows: `_row_bounds`.
    """
    for c in prange(chunks.size - 1):
        a, b = chunks[c], chunks[c + 1]
        for i in range(a, b):
            _dual_slab(i, chi_, phi_, w_, eta, p, q, lap_phi0, labels, steps, a1, a0, r, wc, rows)
            if i - 1 > a:
                _primal_slab(
                    i - 1, chi, chi_, phi, phi_, w, w_, eta, p, q, labels, steps, r, wc, rows
                )
    for c in prange(chunks.size - 1):
        a, b = chunks[c], chunks[c + 1]
        _primal_slab(a, chi, chi_, phi, phi_, w, w_, eta, p, q, labels, steps, r, wc, rows)
        if b - 1 > a:
            _primal_slab(b - 1, chi, chi_, phi, phi_, w, w_, eta, p, q, labels, steps, r, wc, rows)


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _relative_change2(chi, chi_, labels):
    """||chi_k+1 - chi_k||^2 / ||chi_k+1||^2 in the mask, from chi_ - chi = chi_k+1 - chi_k."""
    nx, ny, nz = chi.shape
    change = 0.0
    total = 0.0
    for i in prange(nx):
        for j in range(ny):
            for k in range(nz):
                m1 = labels[i, j, k] & 1
                if m1:
                    d = chi_[i, j, k] - chi[i, j, k]
                    change += d * d
                    total += chi[i, j, k] * chi[i, j, k]
    return change / total if total > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Operators on a ghost-padded box (zero outside the box), exposed for the adjoint tests.


@njit(parallel=True, cache=True)
def _apply_scalar(u, out, kind, r, wc):
    nx, ny, nz = u.shape
    l0, l1, l2 = r[0] * r[0], r[1] * r[1], r[2] * r[2]
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for kk in range(1, nz - 1):
                k = np.uint64(kk)
                if kind == 0:
                    out[i, j, k] = _lap_at(u, i, j, k, l0, l1, l2)
                else:
                    out[i, j, k] = _wave_at(u, i, j, k, wc)


@njit(parallel=True, cache=True)
def _apply_grad(u, out, r):
    nx, ny, nz = u.shape
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for kk in range(1, nz - 1):
                k = np.uint64(kk)
                g = _grad_at(u, i, j, k, r[0], r[1], r[2])
                for c in range(3):
                    out[c, i, j, k] = g[c]


@njit(parallel=True, cache=True)
def _apply_div(p, out, r):
    nx, ny, nz = out.shape
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for kk in range(1, nz - 1):
                k = np.uint64(kk)
                out[i, j, k] = _div_at(p, i, j, k, r[0], r[1], r[2])


@njit(parallel=True, cache=True)
def _apply_symgrad(w, out, r):
    nx, ny, nz = w.shape[1:]
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for kk in range(1, nz - 1):
                k = np.uint64(kk)
                e = _symgrad_at(w, i, j, k, r[0], r[1], r[2])
                for c in range(6):
                    out[c, i, j, k] = e[c]


@njit(parallel=True, cache=True)
def _apply_div2(q, out, r):
    nx, ny, nz = out.shape[1:]
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for kk in range(1, nz - 1):
                k = np.uint64(kk)
                out[0, i, j, k] = _div2_at(q, i, j, k, 0, 1, 2, r[0], r[1], r[2])
                out[1, i, j, k] = _div2_at(q, i, j, k, 1, 3, 4, r[0], r[1], r[2])
                out[2, i, j, k] = _div2_at(q, i, j, k, 2, 4, 5, r[0], r[1], r[2])


def _reciprocal(voxel_size):
    return np.array([1.0 / h for h in voxel_size], dtype=np.float32)


def laplacian(u, voxel_size):
    """7-point Laplacian (1/mm^2) of `u` on its interior; the outer layer of `u` is the zero
    ghost layer (read, never written: the result is 0 there)."""
    out = np.zeros_like(u, dtype=np.float32)
    _apply_scalar(u.astype(np.float32), out, 0, _reciprocal(voxel_size), np.zeros(7, np.float32))
    return out


def wave(u, voxel_size, b0_dir):
    """Dipole operator (1/3) Lap - (b.grad)^2 (1/mm^2) as a 13-point stencil; see module doc."""
    out = np.zeros_like(u, dtype=np.float32)
    coeffs = wave_coefficients(voxel_size, b0_dir)
    _apply_scalar(u.astype(np.float32), out, 1, _reciprocal(voxel_size), coeffs)
    return out


def grad(u, voxel_size):
    """Forward-difference gradient (3, ...) (1/mm) of a ghost-padded volume."""
    out = np.zeros((3, *u.shape), dtype=np.float32)
    _apply_grad(u.astype(np.float32), out, _reciprocal(voxel_size))
    return out


def div(p, voxel_size):
    """Backward-difference divergence, exactly -grad^T."""
    out = np.zeros(p.shape[1:], dtype=np.float32)
    _apply_div(p.astype(np.float32), out, _reciprocal(voxel_size))
    return out


def symgrad(w, voxel_size):
    """Symmetrised gradient E w = (grad w + grad w^T)/2 stored as (xx, xy, xz, yy, yz, zz)."""
    out = np.zeros((6, *w.shape[1:]), dtype=np.float32)
    _apply_symgrad(w.astype(np.float32), out, _reciprocal(voxel_size))
    return out


def div2(q, voxel_size):
    """Divergence of a symmetric tensor field, exactly -E^T in the Frobenius inner product."""
    out = np.zeros((3, *q.shape[1:]), dtype=np.float32)
    _apply_div2(q.astype(np.float32), out, _reciprocal(voxel_size))
    return out


def wave_coefficients(voxel_size, b0_dir):
    """Coefficients of Wave = Lap/3 + B, B = (b.D+)^T (b.D+) (see `_wave_at` for the order)."""
    h = np.asarray(voxel_size, dtype=float)
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    inv2 = 1.0 / h**2
    pairs = ((0, 1), (0, 2), (1, 2))
    cross = {pair: b[pair[0]] * b[pair[1]] / (h[pair[0]] * h[pair[1]]) for pair in pairs}
    center = -2.0 / 3.0 * inv2.sum() + 2.0 * (b**2 * inv2).sum() + 2.0 * sum(cross.values())
    faces = [
        (1.0 / 3.0 - b[d] ** 2) * inv2[d] - sum(v for pair, v in cross.items() if d in pair)
        for d in range(3)
    ]
    edges = [cross[pair] for pair in pairs]
    return np.array([center, *faces, *edges], dtype=np.float32)


def operator_norm(voxel_size, b0_dir, samples=33):
    """||K|| of the block operator (chi, phi, w) -> (Wave chi - Lap phi, grad chi - w, E w).

    The norm of a constant-coefficient stencil operator restricted to a box is at most the
    supremum of its Fourier symbol; the symbol (a 10x5 matrix per frequency, off-diagonal rows of
    E scaled by sqrt(2) for the Frobenius norm) is sampled on a grid that contains 0 and +-pi,
    where the extremes lie, and 1 % is added for safety.
    """
    h = np.asarray(voxel_size, dtype=float)
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    theta = np.linspace(-np.pi, np.pi, samples)
    t = np.stack(np.meshgrid(theta, theta, theta, indexing="ij"), axis=-1).reshape(-1, 3)
    delta = (np.exp(1j * t) - 1.0) / h  # forward-difference symbols, (n, 3)
    lap = -(np.abs(delta) ** 2).sum(axis=1)
    wav = lap / 3.0 + np.abs(delta @ b) ** 2
    n = t.shape[0]
    k = np.zeros((n, 10, 5), dtype=complex)
    k[:, 0, 0] = wav
    k[:, 0, 1] = -lap
    for d in range(3):
        k[:, 1 + d, 0] = delta[:, d]
        k[:, 1 + d, 2 + d] = -1.0
    row = 4
    for d in range(3):
        for e in range(d, 3):
            if d == e:
                k[:, row, 2 + d] = delta[:, d]
            else:
                k[:, row, 2 + d] = delta[:, e] / math.sqrt(2.0)
                k[:, row, 2 + e] = delta[:, d] / math.sqrt(2.0)
            row += 1
    gram = np.conj(np.transpose(k, (0, 2, 1))) @ k
    return 1.01 * math.sqrt(float(np.linalg.eigvalsh(gram)[:, -1].max()))


def diagonal_steps(voxel_size, wc):
    """Pock-Chambolle (2011) diagonal steps (alpha = 1), one per block, from the stencils' sums
    of |coefficients|: sigma_i = 1/sum_j |K_ij| over each dual row block (eta, p, q), tau_j =
    1/sum_i |K_ij| over each primal column block (chi, phi, w). The off-diagonal rows of E count
    with sqrt(2) (the Frobenius inner product). Returns float32 (s_eta, s_p, s_q, t_chi, t_phi,
    t_w); they satisfy ||S^1/2 K T^1/2|| <= 1, so the iteration converges without a norm estimate.
    """
    r = 1.0 / np.asarray(voxel_size, dtype=float)
    wave_sum = abs(wc[0]) + 2.0 * np.abs(wc[1:]).sum()
    lap_sum = 4.0 * (r**2).sum()
    half = math.sqrt(2.0) / 2.0
    q_rows = [2 * r[d] for d in range(3)]
    q_rows += [half * (2 * r[d] + 2 * r[e]) for d, e in ((0, 1), (0, 2), (1, 2))]
    w_cols = [1.0 + 2 * r[d] + sum(half * 2 * r[e] for e in range(3) if e != d) for d in range(3)]
    sums = [
        wave_sum + lap_sum,  # eta row
        1.0 + 2.0 * r.max(),  # p rows
        max(q_rows),  # q rows
        wave_sum + 2.0 * r.sum(),  # chi column
        lap_sum,  # phi column
        max(w_cols),  # w columns
    ]
    return np.array([1.0 / v for v in sums], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# The solver.

FOOTPRINT = ndimage.generate_binary_structure(3, 2)  # faces and edges: the Wave stencil


def solve(
    lap_phi0,
    mask,
    *,
    voxel_size,
    b0_dir,
    alpha1,
    alpha0,
    iterations,
    tol=0.0,
    mask0=None,
    chi0=None,
    preconditioned=True,
):
    """Run TGV-QSM on a box; returns chi in the units of phi0 (rad in, "rad" out).

    lap_phi0: Laplacian of the phase (rad/mm^2) on the box, valid in `mask0` (default: `mask`
    eroded by the stencil footprint); mask: bool, the support of chi, at least 2 voxels from the
    box's faces; voxel_size: mm; alpha1, alpha0: weights of the first- and second-order terms
    for phase in rad and h in mm; iterations: maximum count; tol: stop when the relative change
    of chi in one iteration, ||chi_k+1 - chi_k|| / ||chi_k+1|| in the mask (checked every 10
    iterations), falls below it (0 runs all iterations); chi0: initial chi on the box (rad),
    zero by default; preconditioned: diagonal steps (`diagonal_steps`) rather than the scalar
    1/||K|| (`operator_norm`). Returns (chi, float32, on the box; iterations run).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask0 is None:
        mask0 = ndimage.binary_erosion(mask, FOOTPRINT)
    shape = tuple(n + 2 for n in mask.shape)  # + the zero ghost layer
    inner = (slice(1, -1),) * 3
    # Dimensionless spacing (geometric mean 1): an exact change of variables (w scales by g).
    g = float(np.prod(voxel_size)) ** (1.0 / 3.0)
    h = tuple(float(v) / g for v in voxel_size)
    a1 = np.float32(alpha1 / g)
    a0 = np.float32(alpha0 / g**2)
    r = _reciprocal(h)
    wc = wave_coefficients(h, b0_dir)
    if preconditioned:
        steps = diagonal_steps(h, wc)
    else:
        steps = np.full(6, 1.0 / operator_norm(h, b0_dir), dtype=np.float32)

    labels = np.zeros(shape, dtype=np.uint8)
    labels[inner] = mask.astype(np.uint8) | (mask0.astype(np.uint8) << 1)
    lap0 = np.zeros(shape, dtype=np.float32)
    lap0[inner] = np.where(mask0, lap_phi0, 0.0) * np.float32(g * g)
    chi, chi_, phi, phi_, eta = (np.zeros(shape, dtype=np.float32) for _ in range(5))
    w, w_, p = (np.zeros((3, *shape), dtype=np.float32) for _ in range(3))
    q = np.zeros((6, *shape), dtype=np.float32)
    if chi0 is not None:
        chi[inner] = chi0
        chi_[inner] = chi0

    rows = _row_bounds(labels)
    runs = max(1, min(numba.get_num_threads(), (shape[0] - 2) // 4))
    chunks = np.linspace(1, shape[0] - 1, runs + 1).astype(np.int64)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 (the count is returned)
        _iterate(
            chi, chi_, phi, phi_, w, w_, eta, p, q, lap0, labels, steps, a1, a0, r, wc, chunks, rows
        )
        if tol > 0 and done % 10 == 0 and _relative_change2(chi, chi_, labels) < tol * tol:
            break
    logger.debug("TGV: %d iterations, steps %s", done, steps)
    return chi[inner], done


def _row_bounds(labels):
    """(2, nx, ny) int64: per (i, j) row, the k range [start, stop) an iteration can change.

    Outside the mask the duals stay zero and the primals change only next to it (the stencils
    reach one voxel, diagonals included), so the sweep covers the mask dilated by a 3x3x3 cube;
    for a brain that skips about half of the bounding box. Rows that miss it get an empty range.
    The ranges stay off the ghost layers, whatever the mask: the stencils read one voxel beyond.
    """
    reach = ndimage.binary_dilation(labels > 0, np.ones((3, 3, 3), bool))
    nz = labels.shape[2]
    rows = np.ones((2, *labels.shape[:2]), dtype=np.int64)
    hit = reach.any(axis=2)
    rows[0][hit] = np.maximum(np.argmax(reach, axis=2)[hit], 1)
    rows[1][hit] = np.minimum(nz - np.argmax(reach[..., ::-1], axis=2)[hit], nz - 1)
    return rows


# ----------------------------------------------------------------------------------------------
# Entry points: local field (ppm) and wrapped phase (rad).


def rad_per_ppm(te, b0_tesla):
    """Phase (rad) accrued at echo time `te` (s) per ppm of field at `b0_tesla` (T)."""
    return 2.0 * math.pi * GAMMA_BAR_HZ_PER_T * 1e-6 * b0_tesla * te


def scaled_iterations(iterations, voxel_size):
    """More voxels across the same anatomy need more iterations: QSM.jl's 1/sqrt(voxel volume)
    rule, never fewer than at 1 mm^3."""
    return max(int(iterations), int(round(iterations / math.sqrt(float(np.prod(voxel_size))))))


def solve_in_mask(
    lap_phi0,
    mask,
    *,
    voxel_size,
    b0_dir,
    alpha1,
    alpha0,
    iterations,
    tol=0.0,
    chi0=None,
    data_mask=None,
):
    """`solve` on the mask's bounding box of a whole grid; chi 0 outside the mask.

    lap_phi0: Laplacian of the phase (rad/mm^2), full grid, used on `data_mask` (default: the
    mask) eroded by the stencil footprint; chi0: optional initial chi (rad), full grid.
    iterations: count at 1 mm^3, scaled up for finer grids (`scaled_iterations`).
    Returns (chi in rad, iterations run).
    """
    mask = np.asarray(mask, dtype=bool)
    data_mask = mask if data_mask is None else np.asarray(data_mask, dtype=bool) & mask
    mask0 = ndimage.binary_erosion(data_mask, FOOTPRINT)
    if not mask.any():
        raise ValueError("the mask is empty")
    box = _bbox(mask, margin=0)
    # 2 zero voxels on every side of the box: chi may spill one voxel beyond the mask.
    padded = tuple(n + 4 for n in mask[box].shape)
    inner = (slice(2, -2),) * 3

    def crop(volume, dtype=np.float32):
        out = np.zeros(padded, dtype=dtype)
        out[inner] = volume[box]
        return out

    chi, done = solve(
        crop(lap_phi0), crop(mask, bool), mask0=crop(mask0, bool), voxel_size=voxel_size,
        b0_dir=b0_dir, alpha1=alpha1, alpha0=alpha0,
        iterations=scaled_iterations(iterations, voxel_size), tol=tol,
        chi0=None if chi0 is None else crop(chi0),
    )  # fmt: skip
    out = np.zeros(mask.shape, dtype=np.float32)
    out[box] = chi[inner]
    out[~mask] = 0.0
    return out, done


def wrapped_laplacian(phase_rad, voxel_size):
    """Laplacian (rad/mm^2) of the unwrapped phase computed from the wrapped phase:
    Lap phi = cos(phi) Lap sin(phi) - sin(phi) Lap cos(phi) (7-point stencil, zero ghost layer)."""
    phase = np.asarray(phase_rad, dtype=np.float32)
    pad = [(1, 1)] * 3
    sin = np.pad(np.sin(phase), pad, mode="edge")
    cos = np.pad(np.cos(phase), pad, mode="edge")
    lap_sin = laplacian(sin, voxel_size)[1:-1, 1:-1, 1:-1]
    lap_cos = laplacian(cos, voxel_size)[1:-1, 1:-1, 1:-1]
    return np.cos(phase) * lap_sin - np.sin(phase) * lap_cos
