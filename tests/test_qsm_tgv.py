"""TGV-QSM: adjoint identities of every operator pair, the dipole stencil against the FFT dipole,
step sizes, recovery of analytic spheres and cylinders, the alpha convention, single-step TGV."""

import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.qsm import tgv as T
from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.invert import tgv, tgv_single_step, tikhonov
from bids_qsm.qsm.metrics import nrmse

H = (1.0, 1.3, 2.1)  # deliberately anisotropic
B = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])  # deliberately oblique


LIGHT = {"alpha1": 0.001, "alpha0": 0.003}


def _ghosted(rng, shape):
    """Random field that is zero on the ghost layer (the operators' domain is the interior)."""
    u = np.zeros(shape, dtype=np.float32)
    u[..., 1:-1, 1:-1, 1:-1] = rng.standard_normal(u[..., 1:-1, 1:-1, 1:-1].shape)
    return u


def _dot(a, b, weights=None):
    prod = a.astype(np.float64) * b.astype(np.float64)
    if weights is not None:
        prod *= np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1, 1)
    return prod.sum()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_div_is_minus_adjoint_of_grad(rng):
    u, p = _ghosted(rng, (18, 20, 22)), _ghosted(rng, (3, 18, 20, 22))
    assert np.isclose(_dot(T.grad(u, H), p), -_dot(u, T.div(p, H)), rtol=1e-4)


def test_div2_is_minus_adjoint_of_symgrad(rng):
    # Frobenius inner product of symmetric tensors: off-diagonal entries (xy, xz, yz) twice.
    w, q = _ghosted(rng, (3, 18, 20, 22)), _ghosted(rng, (6, 18, 20, 22))
    lhs = _dot(T.symgrad(w, H), q, weights=[1, 2, 2, 1, 2, 1])
    assert np.isclose(lhs, -_dot(w, T.div2(q, H)), rtol=1e-4)


def test_wave_and_laplacian_are_self_adjoint(rng):
    u, v = _ghosted(rng, (18, 20, 22)), _ghosted(rng, (18, 20, 22))
    assert np.isclose(_dot(T.wave(u, H, B), v), _dot(u, T.wave(v, H, B)), rtol=1e-4)
    assert np.isclose(_dot(T.laplacian(u, H), v), _dot(u, T.laplacian(v, H)), rtol=1e-4)


def test_wave_kills_affine_and_matches_laplacian_of_dipole_field():
    """Lap (D * chi) = Wave chi: the stencil against the FFT dipole kernel, oblique B0."""
    shape, h = (48, 48, 48), (1.0, 1.0, 1.5)
    x, y, z = np.meshgrid(
        *[(np.arange(n) - n / 2) * s for n, s in zip(shape, h, strict=True)], indexing="ij"
    )
    chi = np.exp(-(x**2 + y**2 + z**2) / (2 * 5.0**2)).astype(np.float32)  # smooth blob
    field = forward_field(chi, h, B)
    lhs = T.laplacian(field, h)[8:-8, 8:-8, 8:-8]
    rhs = T.wave(chi, h, B)[8:-8, 8:-8, 8:-8]
    # second-order stencils against the exact kernel: a few % on a blob of sigma 5 mm
    assert np.linalg.norm(lhs - rhs) < 0.05 * np.linalg.norm(rhs)
    affine = (0.3 * x - 0.2 * y + 0.1 * z + 1.0).astype(np.float32)
    assert np.abs(T.wave(affine, h, B)[1:-1, 1:-1, 1:-1]).max() < 1e-4


def test_steps_bound_the_operator(rng):
    """Power iteration on the actual block operator K: the Fourier bound is above ||K||, and the
    diagonal (Pock-Chambolle) steps give ||S^1/2 K T^1/2|| <= 1."""
    shape = (10, 12, 14)
    wc = T.wave_coefficients(H, B)
    s_eta, s_p, s_q, t_chi, t_phi, t_w = (float(v) for v in T.diagonal_steps(H, wc))
    root2 = np.array([1, 2, 2, 1, 2, 1], dtype=np.float64).reshape(-1, 1, 1, 1) ** 0.5

    def k_op(chi, phi, w, scaled):
        a, b, c = (np.sqrt(t_chi), np.sqrt(t_phi), np.sqrt(t_w)) if scaled else (1, 1, 1)
        chi, phi, w = chi * a, phi * b, w * c
        eta = T.wave(chi, H, B) - T.laplacian(phi, H)
        p = T.grad(chi, H) - w
        q = T.symgrad(w, H) * root2
        if scaled:
            eta, p, q = eta * np.sqrt(s_eta), p * np.sqrt(s_p), q * np.sqrt(s_q)
        return eta, p, q

    def kt_op(eta, p, q, scaled):
        if scaled:
            eta, p, q = eta * np.sqrt(s_eta), p * np.sqrt(s_p), q * np.sqrt(s_q)
        chi = T.wave(eta, H, B) - T.div(p, H)
        phi = -T.laplacian(eta, H)
        w = -p - T.div2(q / root2, H)  # E^T in Euclidean coordinates q' = sqrt(weights) q
        if scaled:
            chi, phi, w = chi * np.sqrt(t_chi), phi * np.sqrt(t_phi), w * np.sqrt(t_w)
        return chi, phi, w

    for scaled, bound in ((False, T.operator_norm(H, B)), (True, 1.0)):
        x = [_ghosted(rng, shape), _ghosted(rng, shape), _ghosted(rng, (3, *shape))]
        for _ in range(40):
            x = [v.astype(np.float32) for v in kt_op(*k_op(*x, scaled), scaled)]
            norm = np.sqrt(sum(_dot(v, v) for v in x))
            x = [v / norm for v in x]
        y = k_op(*x, scaled)
        estimate = np.sqrt(sum(_dot(v, v) for v in y))
        assert 0.8 * bound < estimate <= bound * 1.001


def _reference_iteration(state, lap0, labels, steps, a1, a0):
    """One Chambolle-Pock iteration written with the exposed operators (dual, then primal)."""
    chi, chi_, phi, phi_, w, w_, eta, p, q = (x.copy() for x in state)
    m1 = (labels & 1).astype(np.float32)
    m0 = ((labels >> 1) & 1).astype(np.float32)
    s_eta, s_p, s_q, t_chi, t_phi, t_w = steps
    eta += s_eta * m0 * (T.wave(chi_, H, B) - T.laplacian(phi_, H) - lap0)
    g = p + s_p * m1 * (T.grad(chi_, H) - w_)
    p = g / np.maximum(1.0, np.sqrt((g**2).sum(0)) / a1)
    e = q + s_q * m1 * T.symgrad(w_, H)
    frobenius = (e[[0, 3, 5]] ** 2).sum(0) + 2 * (e[[1, 2, 4]] ** 2).sum(0)
    q = e / np.maximum(1.0, np.sqrt(frobenius) / a0)
    new = chi + t_chi * (T.div(p, H) - T.wave(eta, H, B))
    chi, chi_ = new, 2 * new - chi
    new = (phi + t_phi * T.laplacian(eta, H)) * (m1 / (1 + t_phi) + 1 - m1)
    phi, phi_ = new, 2 * new - phi
    new = w + t_w * (p + T.div2(q, H))
    w, w_ = new, 2 * new - w
    return chi, chi_, phi, phi_, w, w_, eta, p, q


@pytest.mark.parametrize("runs", [1, 2, 5])
def test_fused_sweep_equals_dual_then_primal(rng, runs):
    """The slab-pipelined kernel (dual on slab i, primal on slab i-1, run edges in a second
    pass, each row swept only where the mask reaches) computes exactly one dual step followed by
    one primal step on the whole box, however the slabs are split between threads. The state
    keeps the solver's invariants: duals zero outside the mask, everything zero beyond reach."""
    shape = (23, 14, 16)
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    ball = (x / 8) ** 2 + (y / 4.5) ** 2 + (z / 5) ** 2
    labels = (ball < 1).astype(np.uint8) | ((ball < 0.5).astype(np.uint8) << 1)
    rows = T._row_bounds(labels)
    assert 0 < np.sum(rows[1] - rows[0]) < 0.8 * np.prod(shape)  # rows really are cut
    reach = ndimage.binary_dilation(labels > 0, np.ones((3, 3, 3), bool))
    state = [_ghosted(rng, s) for s in [shape] * 6 + [shape, shape, shape]]
    state[4], state[5], state[7] = (_ghosted(rng, (3, *shape)) for _ in range(3))
    state[8] = _ghosted(rng, (6, *shape))
    for n, where in enumerate([reach] * 6 + [labels >= 2, labels > 0, labels > 0]):
        state[n] *= where
    lap0 = _ghosted(rng, shape)
    steps = np.array([0.05, 0.2, 0.15, 0.04, 0.1, 0.12], np.float32)
    a1, a0 = np.float32(0.7), np.float32(1.1)
    expected = _reference_iteration(state, lap0, labels, steps, a1, a0)
    r = np.array([1.0 / h for h in H], np.float32)
    chunks = np.linspace(1, shape[0] - 1, runs + 1).astype(np.int64)
    T._iterate(*state, lap0, labels, steps, a1, a0, r, T.wave_coefficients(H, B), chunks, rows)
    for got, want in zip(state, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_row_bounds_cover_the_reach_and_stay_off_the_ghost_layers(rng):
    """Every voxel within one step (3x3x3) of the mask lies in its row's range, except on the
    ghost layers, which no range reaches, even for a mask that touches them."""
    labels = (rng.random((9, 8, 10)) < 0.05).astype(np.uint8)
    labels[4, 4, 1] = labels[2, 3, -2] = 1  # next to the ghost layers along k
    rows = T._row_bounds(labels)
    reach = ndimage.binary_dilation(labels > 0, np.ones((3, 3, 3), bool))
    k = np.arange(labels.shape[2])
    swept = (k >= rows[0][..., None]) & (k < rows[1][..., None])
    interior = np.zeros_like(reach)
    interior[:, :, 1:-1] = True
    assert np.all(swept[reach & interior]) and not np.any(swept & ~interior)


def _coords(shape, voxel_size):
    axes = [(np.arange(n) - n / 2 + 0.5) * h for n, h in zip(shape, voxel_size, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def _sphere(voxel_size, b0_dir, shape=(56, 56, 56)):
    x, y, z = _coords(shape, voxel_size)
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = np.where(r < 7.0, 0.2, 0.0).astype(np.float32)
    return forward_field(chi, voxel_size, b0_dir), r < 22.0, r


@pytest.mark.parametrize(
    ("voxel_size", "b0_dir"),
    [((1.0, 1.0, 1.0), (0.0, 0.0, 1.0)), ((1.0, 1.0, 1.0), tuple(B)), ((1.0, 1.0, 2.0), (0, 0, 1))],
)
def test_tgv_sphere(voxel_size, b0_dir):
    field, mask, r = _sphere(voxel_size, b0_dir)
    # Noise-free data: light regularisation (the defaults are set for in vivo noise).
    chi = tgv(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, iterations=200, **LIGHT)
    contrast = chi[r < 5].mean() - chi[(r > 11) & (r < 18)].mean()
    # 200 iterations sharpen the edges of the Tikhonov start but move its (low-frequency)
    # plateau slowly: the contrast is within 20 %, the error against the truth smaller.
    assert abs(contrast - 0.2) < 0.2 * 0.2
    truth = np.where(r < 7.0, 0.2, 0.0)
    start = tikhonov(field, mask, voxel_size=voxel_size, b0_dir=b0_dir)
    assert nrmse(chi, truth, mask) < 0.98 * nrmse(start, truth, mask)
    assert chi.dtype == np.float32 and np.all(chi[~mask] == 0)


@pytest.mark.parametrize("angle_deg", [0.0, 55.0, 90.0])
def test_tgv_cylinder(angle_deg):
    """Infinite cylinder along x-z at `angle_deg` to B0 (B0 rotated about y): recovered chi."""
    shape, radius = (48, 48, 48), 5.0
    x, y, z = _coords(shape, (1.0, 1.0, 1.0))
    rho = np.sqrt(x**2 + y**2)  # cylinder axis along z in voxel axes
    chi_true = np.where(rho < radius, 0.2, 0.0).astype(np.float32)
    theta = np.deg2rad(angle_deg)
    b0 = (np.sin(theta), 0.0, np.cos(theta))
    # Analytic field (ppm) inside and outside an infinite cylinder, Lorentz-corrected.
    phi = np.arctan2(y, x)  # azimuth in the plane across the cylinder, measured from B0's side
    inside = 0.2 / 6 * (3 * np.cos(theta) ** 2 - 1)
    outside = 0.2 / 2 * np.sin(theta) ** 2 * (radius / np.maximum(rho, 1e-6)) ** 2 * np.cos(2 * phi)
    field = np.where(rho < radius, inside, outside).astype(np.float32)
    mask = (rho < 18.0) & (np.abs(z) < 20.0)
    chi = tgv(field, mask, voxel_size=(1, 1, 1), b0_dir=b0, iterations=200, **LIGHT)
    core, ring = (rho < 3.5) & (np.abs(z) < 12), (rho > 8) & (rho < 14) & (np.abs(z) < 12)
    contrast = chi[core].mean() - chi[ring].mean()
    # At 55 degrees the field inside is zero: chi is known only from the field outside.
    assert abs(contrast - 0.2) < 0.4 * 0.2
    assert np.corrcoef(chi[mask], chi_true[mask])[0, 1] > 0.8


def test_alpha_convention_field_scaling():
    """ppm in with (te, b0) is the same problem as phase in rad with the alphas unchanged:
    doubling the field and halving te leaves chi in rad unchanged, so chi (ppm) doubles."""
    field, mask, _ = _sphere((1.0, 1.0, 1.0), (0, 0, 1), shape=(40, 40, 40))
    one = tgv(field, mask, voxel_size=(1, 1, 1), te=0.02, iterations=50)
    two = tgv(2 * field, mask, voxel_size=(1, 1, 1), te=0.01, iterations=50)
    assert np.allclose(two, 2 * one, atol=1e-4 * np.abs(one).max())


def test_solver_scaling_alpha_in_ppm_equals_rad():
    """Solving in ppm with alphas / s equals solving in rad (s rad/ppm) and dividing by s."""
    field, mask, _ = _sphere((1.0, 1.0, 1.0), (0, 0, 1), shape=(40, 40, 40))
    s = T.rad_per_ppm(0.02, 3.0)
    lap = T.laplacian(np.pad(field * mask, 1), (1, 1, 1))[1:-1, 1:-1, 1:-1]
    common = dict(voxel_size=(1, 1, 1), b0_dir=(0, 0, 1), iterations=50)
    rad, _ = T.solve_in_mask(lap * s, mask, alpha1=5e-3, alpha0=1.5e-2, **common)
    ppm, _ = T.solve_in_mask(lap, mask, alpha1=5e-3 / s, alpha0=1.5e-2 / s, **common)
    assert np.allclose(rad / s, ppm, atol=1e-3 * np.abs(ppm).max())


def test_convergence_test_stops_once_the_change_is_below_tol():
    """tol: the solver stops at the first check (every 10 iterations) where one iteration
    changes chi by less than tol (relative, in the mask), and not before."""
    field, mask, _ = _sphere((1.0, 1.0, 1.0), (0, 0, 1), shape=(40, 40, 40))
    lap = T.laplacian(np.pad(field * mask, 1), (1, 1, 1))[1:-1, 1:-1, 1:-1]
    common = dict(voxel_size=(1, 1, 1), b0_dir=(0, 0, 1), alpha1=1e-3, alpha0=3e-3)
    tol, cap = 1e-3, 5000
    _, done = T.solve_in_mask(lap, mask, iterations=cap, tol=tol, **common)
    assert done < cap and done % 10 == 0

    def change(n):
        before, after = (T.solve_in_mask(lap, mask, iterations=k, **common)[0] for k in (n - 1, n))
        return np.linalg.norm((after - before)[mask]) / np.linalg.norm(after[mask])

    assert change(done) < tol <= change(done - 10)


def test_single_step_from_wrapped_phase_with_background():
    """Wrapped phase = local field of a sphere + a strong background (a source outside the
    mask) at TE 20 ms, 3 T: single-step TGV recovers the sphere without unwrapping or
    background removal."""
    shape = (56, 56, 56)
    x, y, z = _coords(shape, (1.0, 1.0, 1.0))
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = np.where(r < 7.0, 0.2, 0.0).astype(np.float32)
    outside_source = np.sqrt(x**2 + y**2 + (z - 25) ** 2) < 3.0  # air-like, outside the mask
    chi_all = chi + np.where(outside_source, -9.0, 0.0).astype(np.float32)
    te, b0 = 0.02, 3.0
    phase = forward_field(chi_all, (1, 1, 1), (0, 0, 1)) * T.rad_per_ppm(te, b0)
    mask = r < 20.0
    assert np.ptp(phase[mask]) > 2 * np.pi  # there are wraps to deal with
    wrapped = np.angle(np.exp(1j * phase)).astype(np.float32)
    out = tgv_single_step(
        wrapped, mask, voxel_size=(1, 1, 1), te=te, b0_tesla=b0, iterations=200, erosions=1, **LIGHT
    )
    contrast = out[r < 5].mean() - out[(r > 11) & (r < 16)].mean()
    assert abs(contrast - 0.2) < 0.35 * 0.2
    assert np.all(out[r > 19.5] == 0)
