"""Dipole inversions that fit what background removal left behind: field (ppm) -> chi (ppm).

Background removal errs at the brain's edge (bone and air partial volume, eroded masks): the
local field it returns carries a residual background, a field that is harmonic (or nearly) in
the mask. A plain inversion must explain it with susceptibility, and streaks or shadows follow.

- `wh_qsm`: weak-harmonic QSM (Milovic et al. 2019). Chi and a harmonic field phi are fitted
  jointly to the local field: 1/2 ||M (D chi + phi - f)||^2 + alpha TV(chi)
  + beta/2 ||M Lap phi||^2, so phi takes the residual background (whose Laplacian is small in
  the mask) and chi the rest. ADMM; every linear step is closed-form in Fourier space.
- `tfi`: preconditioned total field inversion (Liu et al. 2017). Chi inside and outside the
  mask is fitted to the field inside it, the outside penalised 1/30 as much, so that sources
  outside (air, bone) take the residual background. ADMM with closed-form Fourier steps.

Both take `f(local_field_ppm, mask, *, voxel_size, b0_dir, <options>) -> chi_ppm` like the
methods of `invert.py`: float32, 0 outside the mask, on the mask's bounding box padded for the
FFT.
"""

import functools
import logging
import math

import numpy as np
from numba import njit, prange
from scipy import ndimage

from . import background
from .dipole import dipole_kernel
from .fftbox import FFTBox, fft_pad, gradient_power, half_spectrum, irfftn, rfftn
from .tgv import rad_per_ppm

logger = logging.getLogger(__name__)


def wh_qsm(
    local_field_ppm,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    regularization=5e-3,
    te=0.02,
    b0_tesla=3.0,
    harmonic_weight=1e3,
    harmonic_penalty=0.3,
    iterations=100,
    tol=1e-3,
    pad_fraction=0.125,
    brain=None,
    extend_layers=1,
    report=None,
):
    """Weak-harmonic QSM: chi (ppm) with a residual harmonic field fitted beside it.

    local_field_ppm: local field (ppm) from a background removal, valid on `mask` (bool);
    voxel_size: mm; b0_dir: unit B0 vector in voxel axes. Minimises over chi and phi (ppm)
    1/2 ||M (D chi + phi - f)||^2 + alpha ||grad chi||_1 + beta/2 ||M Lap phi||^2
    (Milovic et al. 2019, with the linear data term), M the mask, grad forward differences
    (1/mm, anisotropic L1), Lap the 7-point Laplacian (1/mm^2). beta = `harmonic_weight`
    (mm^4): large enough that the smooth residual background goes to phi, small enough that
    phi does not follow the local field of sources inside the mask.

    alpha follows TGV's convention (see `invert.tgv`): `regularization` (rad mm) weighs the
    total variation of a field expressed as phase in rad at echo time `te` (s) and field
    strength `b0_tesla` (T), so alpha = regularization / (2 pi gamma_bar b0 te) in ppm mm.
    Phase noise does not depend on TE or B0, so passing the acquisition's (noise-equivalent)
    echo time keeps the penalty matched to the field's noise. The default, 5e-3, is 3.1e-4
    ppm mm at 20 ms and 3 T. On the 2016 challenge's local field (TE 25 ms, 2.89 T), against
    COSMOS: correlation 0.774 at a slope of 0.89 (5e-3), 0.794 at 0.79 (8e-3); a slope near 1
    was preferred. On the head phantom's true total field with RESHARP, lighter is better
    (NRMSE 51 / 43 / 39 % at 5 / 2 / 1e-4 ppm mm).

    ADMM with three splittings (z = D chi + phi, y = grad chi, h = Lap phi, the last with
    penalty `harmonic_penalty`, mm^4); the (chi, phi) step is a 2x2 system per frequency,
    solved exactly; at most `iterations` ADMM iterations, fewer once the relative change of chi
    in one iteration falls below `tol` (0: run them all). The box is padded by `pad_fraction`
    of the mask's extent (at least 8 voxels): the data term holds on the mask only, so the
    periodic wrap-around matters less than for a field set to zero outside.
    brain: optional bool brain mask; chi is then returned on the brain voxels up to
    `extend_layers` voxels outside `mask` too (from the regulariser, as `tgv` does).
    report: optional dict that receives `iterations_run`.
    Returns chi (ppm), float32, 0 outside the mask (or its extension).
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    box = FFTBox(mask, fft_pad(mask, pad_fraction))
    shape = box.shape
    inside = box.crop(mask).astype(np.float32)
    f = box.crop(np.where(mask, field, np.float32(0.0)))
    kernel = half_spectrum(dipole_kernel(shape, voxel_size, b))
    g2 = gradient_power(shape, voxel_size)  # |grad|^2; the Laplacian's symbol is -g2
    alpha = np.float32(regularization / rad_per_ppm(te, b0_tesla))
    # Penalties of the splittings: data 1 (the data term's own scale), gradient 100 alpha as in
    # `tv`, Laplacian `harmonic_penalty`: on the test phantom 0.3 reaches in 100 iterations what
    # 10 (or beta / 100) does not in 300, whatever beta.
    mu = np.float32(1.0)
    rho = np.float32(100.0) * alpha
    nu = np.float32(harmonic_penalty)
    beta = np.float32(harmonic_weight)
    # The 2x2 normal system [[mu D^2 + rho g2, mu D], [mu D, mu + nu g2^2]] per frequency.
    a11 = mu * kernel**2 + rho * g2
    a12 = mu * kernel
    a22 = mu + nu * g2**2
    det = a11 * a22 - a12**2
    det[0, 0, 0] = 1.0  # k = 0: chi's mean is undetermined (kept 0), phi takes the data's mean
    inv11, inv12, inv22 = a22 / det, -a12 / det, a11 / det
    inv11[0, 0, 0], inv12[0, 0, 0], inv22[0, 0, 0] = 0.0, 0.0, 1.0 / mu

    h_ = np.asarray(voxel_size, dtype=np.float32)
    threshold = np.full(shape, alpha / rho, dtype=np.float32)
    chi = np.zeros(shape, dtype=np.float32)
    # As in `_tfi_admm`, only the differences z - s, y - u and h - t enter the (chi, phi) step.
    s, z_minus_s = np.zeros(shape, dtype=np.float32), f.copy()
    u, y_minus_u = np.zeros((3, *shape), dtype=np.float32), np.zeros((3, *shape), dtype=np.float32)
    t, h_minus_t = np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)
    grad = np.empty((3, *shape), dtype=np.float32)
    div = np.empty(shape, dtype=np.float32)
    done = 0
    while done < iterations:
        _divergence(y_minus_u, h_, div)  # -grad^T (y - u)
        chi_hat, model_hat, lap_hat = rfftn(z_minus_s), rfftn(div), rfftn(h_minus_t)
        _wh_step(chi_hat, model_hat, lap_hat, kernel, g2, inv11, inv12, inv22, mu, rho, nu)
        previous, chi = chi, irfftn(chi_hat, shape)
        model, lap_phi = irfftn(model_hat, shape), irfftn(lap_hat, shape)
        _gradient(chi, h_, grad)
        # z: the data term holds on the mask only; outside it z follows the model.
        _data_step(model, f, inside, mu, s, z_minus_s)
        _shrink_step(grad, threshold, u, y_minus_u)
        _harmonic_step(lap_phi, inside, nu, beta, t, h_minus_t)
        done += 1
        if tol > 0 and _relative_change(chi, previous) <= tol:
            break
    logger.info("WH-QSM: %d iterations", done)
    if report is not None:
        report["iterations_run"] = done
    return box.paste(chi, _support(mask, brain, extend_layers))


# Strength of `tfi` (rad mm) with and without a measured noise level; see its docstring.
TFI_REGULARIZATION = 3e-3
TFI_REGULARIZATION_WITHOUT_NOISE = 5e-3


def tfi(
    local_field_ppm,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    regularization=None,
    noise_ppm=None,
    te=0.02,
    b0_tesla=3.0,
    outside_scale=30.0,
    pad_mm=20.0,
    iterations=200,
    tol=1e-3,
    brain=None,
    extend_layers=2,
    lbv_mask=None,
    boundary_iterations=50,
    report=None,
):
    """Preconditioned total field inversion: chi (ppm) fitted with sources outside the mask.

    local_field_ppm: field (ppm) valid on `mask` (bool), best after background removal (see
    below); voxel_size: mm; b0_dir: unit B0 vector in voxel axes. Chi lives inside and outside
    the mask, on its bounding box plus `pad_mm` (mm) of margin, and only the field inside the
    mask is fitted (Liu et al. 2017): whatever background the field still holds is explained by
    sources outside, not by streaks inside. With chi = P y, P 1 in the brain and
    `outside_scale` outside (air and bone are tens of times stronger sources than tissue),
    minimises 1/2 ||M (D P y - f)||^2 + alpha ||grad y||_1: the total variation of chi, at
    1/`outside_scale` of its weight outside the brain (the brain is `mask`, with `brain` if
    given). Liu et al. put P into a Gauss-Newton conjugate-gradient solver, where it steers
    which solution the iterations reach; here it sits in the penalty, and ADMM (z = D chi,
    y = grad chi; closed-form Fourier steps) solves the problem itself. alpha as in `wh_qsm`:
    `regularization` in rad mm for phase at `te` (s) and `b0_tesla` (T).

    regularization None: `TFI_REGULARIZATION` (3e-3) where the echo fit measured the field's
    noise (noise_ppm given: three echoes or more), `TFI_REGULARIZATION_WITHOUT_NOISE` (5e-3)
    where it could not (one or two echoes, a field given in ppm). The first was chosen on five
    forward simulations of the COSMOS map (qsm-forward at 3 and 7 T, SNR 50-100, tilted B0; the
    project's head with it at SNR 50 and 80) and three head phantoms (SNR 40-100) for NRMSE,
    HFEN, slope and deep grey matter means together: against 5e-3 it gains 0.7-1.8 points of
    NRMSE, 2.5-3.1 of HFEN and 0.024-0.032 of slope on every simulation (the slope of the
    hardest, SNR 50 with four echoes, from 0.774 to 0.806); on the head phantoms NRMSE goes
    from 51.4 / 59.1 / 57.0 % to 46.4 / 56.5 / 57.7 % and the largest deep grey matter error from
    0.0076 / 0.0152 / 0.0142 to 0.0076 / 0.0163 / 0.0155 ppm. 2e-3 gains a little more on the
    simulations but lets the SNR 100 head phantom's residual background into its deep grey
    matter (0.0103 ppm). The best
    strength did not follow the noise level across these data sets (SNR 50 wanted no more than
    SNR 100), so the noise map decides only whether the data are multi-echo fits with a measured
    noise; without one, the stronger former default is the safer side. The value used lands in
    `report` (`regularization`).

    From a total field the outside sources converge slowly (43 % NRMSE after 400 iterations on
    the 64^3 test phantom); after RESHARP the residual is small and 200 iterations fit it (on
    the same phantom 6.6 %, WH-QSM 10 %). On the head phantom's true total field after RESHARP,
    with the brain extension: 36.7 % NRMSE, slope 0.76, against 41.1 % for WH-QSM and 71.7 %
    for TGV (benchmarks/validate_edge.py). At most `iterations`, fewer once the relative change
    of chi in one iteration falls below `tol` (0: run them all).
    brain: optional bool brain mask; chi is then returned on the brain voxels up to
    `extend_layers` voxels outside `mask` too: background removal and the pipeline's unreliable
    edge (`mask.reliable_field`) take a band of two or three voxels off the brain, and two
    layers of the fitted chi give most of it back (on the head phantom, 1 / 2 / 4 layers: NRMSE
    43 / 51 / 72 %, coverage 0.85 / 0.93 / 0.98).

    lbv_mask: the mask LBV took its boundary from, where the field came from `background.lbv`.
    LBV takes the whole field on that boundary for background, the brain's own field there
    too, and removes its harmonic extension with it: a smooth residual that reaches deep into
    the brain (the brain stem and substantia nigra on the head phantom). A first pass of
    `boundary_iterations` then estimates chi on the brain (the mask and its extension), and
    the harmonic extension of the field that chi makes on that boundary is given back before
    the inversion proper. Noise is what makes that residual matter: on the SNR 50 head phantom
    LBV then TFI on the true total field put the deep grey matter up to 0.023 ppm high with the
    field's noise added, 0.0024 without it, and 0.0049 from the true local field with the noise.
    With the first pass the largest deep grey matter error of five head phantoms (SNR 40-100,
    3 and 7 T) is 0.0056-0.0091 ppm instead of 0.0076-0.0163; on the forward simulations of the
    COSMOS map NRMSE moves by -0.8 to +0.2 points, except the project's head with it at SNR 50
    (+2.6; docs/validation.md).
    report: optional dict that receives `iterations_run`, `boundary_pass_iterations` (those of
    the first pass, 0 without one) and `regularization`.
    Returns chi (ppm), float32, 0 outside the mask (or its extension).
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    box = FFTBox(mask, tuple(max(8, int(math.ceil(pad_mm / h))) for h in voxel_size))
    shape = box.shape
    support = _support(mask, brain, extend_layers)
    inside = box.crop(mask).astype(np.float32)
    f = box.crop(np.where(mask, field, np.float32(0.0)))
    tissue = box.crop(mask if brain is None else mask | np.asarray(brain, dtype=bool))
    kernel = half_spectrum(dipole_kernel(shape, voxel_size, b))
    if regularization is None:
        measured = noise_ppm is not None
        regularization = TFI_REGULARIZATION if measured else TFI_REGULARIZATION_WITHOUT_NOISE
    alpha = np.float32(regularization / rad_per_ppm(te, b0_tesla))
    # Penalty of the data splitting 0.1 (`wh_qsm` uses 1): the outside sources then converge
    # about seven times faster (on the head phantom 200 iterations reach what 1500 reach at 1).
    mu, rho = np.float32(0.1), np.float32(100.0) * alpha
    denominator = mu * kernel**2 + rho * gradient_power(shape, voxel_size)
    denominator[0, 0, 0] = 1.0  # the mean of chi is not determined; keep it at zero
    # Soft threshold per voxel: alpha / rho in the brain, 1 / outside_scale of it outside.
    threshold = np.where(tissue, np.float32(1.0), np.float32(1.0 / outside_scale)) * (alpha / rho)
    solve = functools.partial(
        _tfi_admm, inside=inside, kernel=kernel, denominator=denominator, threshold=threshold,
        mu=mu, rho=rho, voxel_size=voxel_size, tol=tol,
    )  # fmt: skip
    first_pass = 0
    if lbv_mask is not None and boundary_iterations > 0:
        lbv_mask = np.asarray(lbv_mask, dtype=bool)
        if lbv_mask.shape != mask.shape:
            raise ValueError(f"lbv_mask {lbv_mask.shape} and mask {mask.shape} differ in grid")
        lbv_mask = box.crop(lbv_mask)
        first, first_pass = solve(f, iterations=boundary_iterations)
        f = f + _removed_by_lbv(first * box.crop(support), kernel, lbv_mask, voxel_size, inside)
    chi, done = solve(f, iterations=iterations)
    logger.info("TFI: %d iterations (first pass: %d)", done, first_pass)
    if report is not None:
        report.update(
            iterations_run=done,
            boundary_pass_iterations=first_pass,
            regularization=float(regularization),
        )
    return box.paste(chi, support)


def _removed_by_lbv(chi, kernel, lbv_mask, voxel_size, inside):
    """What LBV removed of the field (ppm) that `chi` (ppm, on the box) makes: the harmonic
    extension of that field on LBV's boundary, where `inside` (the data mask) holds, else 0."""
    own = irfftn(kernel * rfftn(chi), chi.shape)
    removed = background.harmonic_extension(own, lbv_mask, voxel_size=voxel_size)
    return np.where(inside > 0, removed, np.float32(0.0)).astype(np.float32)


def _tfi_admm(f, *, inside, kernel, denominator, threshold, mu, rho, voxel_size, iterations, tol):
    """`tfi`'s ADMM on its box from chi = 0: (chi, iterations run)."""
    shape = f.shape
    h_ = np.asarray(voxel_size, dtype=np.float32)
    threshold = np.ascontiguousarray(threshold, dtype=np.float32)
    chi = np.zeros(shape, dtype=np.float32)
    # Only the differences z - s and y - u enter the chi step; the fused steps below keep them.
    s, z_minus_s = np.zeros(shape, dtype=np.float32), f.copy()
    u, y_minus_u = np.zeros((3, *shape), dtype=np.float32), np.zeros((3, *shape), dtype=np.float32)
    grad = np.empty((3, *shape), dtype=np.float32)
    div = np.empty(shape, dtype=np.float32)
    done = 0
    while done < iterations:
        _divergence(y_minus_u, h_, div)  # -grad^T (y - u)
        chi_hat, model_hat = rfftn(z_minus_s), rfftn(div)
        _chi_step(chi_hat, model_hat, kernel, denominator, mu, rho)
        previous, chi = chi, irfftn(chi_hat, shape)
        model = irfftn(model_hat, shape)
        _gradient(chi, h_, grad)
        _data_step(model, f, inside, mu, s, z_minus_s)
        _shrink_step(grad, threshold, u, y_minus_u)
        done += 1
        if tol > 0 and _relative_change(chi, previous) <= tol:
            break
    return chi, done


@njit(parallel=True, fastmath=True, cache=True)
def _chi_step(data_hat, div_hat, kernel, denominator, mu, rho):
    """`tfi`'s chi step in Fourier space, in place: from the spectra of z - s and of
    -grad^T (y - u), chi's (into `data_hat`) and its field's (into `div_hat`); chi's mean 0."""
    d, g = data_hat.ravel(), div_hat.ravel()
    k, den = kernel.ravel(), denominator.ravel()
    for n in prange(d.size):
        chi = (mu * k[n] * d[n] - rho * g[n]) / den[n] if n > 0 else np.complex64(0.0)
        d[n] = chi
        g[n] = k[n] * chi


@njit(parallel=True, fastmath=True, cache=True)
def _wh_step(data_hat, div_hat, lap_hat, kernel, g2, inv11, inv12, inv22, mu, rho, nu):
    """`wh_qsm`'s (chi, phi) step in Fourier space, in place: from the spectra of z - s,
    -grad^T (y - u) and h - t, chi's (into `data_hat`), the model field D chi + phi's (into
    `div_hat`) and the Laplacian of phi's (into `lap_hat`), by the inverse 2x2 system."""
    d, g, q = data_hat.ravel(), div_hat.ravel(), lap_hat.ravel()
    k, w = kernel.ravel(), g2.ravel()
    i11, i12, i22 = inv11.ravel(), inv12.ravel(), inv22.ravel()
    for n in prange(d.size):
        r1 = mu * k[n] * d[n] - rho * g[n]
        r2 = mu * d[n] - nu * w[n] * q[n]  # Lap^T = Lap, symbol -g2
        chi = i11[n] * r1 + i12[n] * r2
        phi = i12[n] * r1 + i22[n] * r2
        d[n] = chi
        g[n] = k[n] * chi + phi
        q[n] = -w[n] * phi


@njit(parallel=True, fastmath=True, cache=True)
def _harmonic_step(lap_phi, inside, nu, beta, t, h_minus_t):
    """`wh_qsm`'s Laplacian splitting, voxel by voxel: h minimises beta/2 M h^2 +
    nu/2 (Lap phi - h + t)^2, t += Lap phi - h; h - t into `h_minus_t`."""
    lap, weight = lap_phi.ravel(), inside.ravel()
    dual, out = t.ravel(), h_minus_t.ravel()
    for n in prange(lap.size):
        h = nu * (lap[n] + dual[n]) / (nu + beta * weight[n])
        dual[n] += lap[n] - h
        out[n] = h - dual[n]


@njit(parallel=True, fastmath=True, cache=True)
def _data_step(model, f, inside, mu, s, z_minus_s):
    """The data splitting of `tfi` and `wh_qsm`, voxel by voxel: z = (M f + mu (model + s)) /
    (M + mu) (the data term holds where M > 0; elsewhere z follows the model), s += model - z;
    z - s into `z_minus_s`. In one pass over memory, where NumPy would make five."""
    m, data, weight = model.ravel(), f.ravel(), inside.ravel()
    dual, out = s.ravel(), z_minus_s.ravel()
    for n in prange(m.size):
        z = (weight[n] * data[n] + mu * (m[n] + dual[n])) / (weight[n] + mu)
        dual[n] += m[n] - z
        out[n] = z - dual[n]


@njit(parallel=True, fastmath=True, cache=True)
def _shrink_step(grad, threshold, u, y_minus_u):
    """The gradient splitting of `tfi` and `wh_qsm`, voxel by voxel: y = soft threshold of
    grad + u by the voxel's threshold, u += grad - y; y - u into `y_minus_u`."""
    voxels = threshold.size
    g, t = grad.reshape((3, voxels)), threshold.ravel()
    dual, out = u.reshape((3, voxels)), y_minus_u.reshape((3, voxels))
    for n in prange(voxels):
        for c in range(3):
            v = g[c, n] + dual[c, n]
            y = v - t[n] if v > t[n] else (v + t[n] if v < -t[n] else np.float32(0.0))
            dual[c, n] = v - y
            out[c, n] = y - dual[c, n]


@njit(parallel=True, fastmath=True, cache=True)
def _relative_change(new, old):
    """||new - old|| / ||new|| (float64 sums)."""
    a, b = new.ravel(), old.ravel()
    change, size = 0.0, 0.0
    for n in prange(a.size):
        change += (np.float64(a[n]) - b[n]) ** 2
        size += np.float64(a[n]) ** 2
    if size > 0:
        return np.sqrt(change / size)
    return 0.0 if change == 0 else np.inf


@njit(parallel=True, fastmath=True, cache=True)
def _gradient(x, h, out):
    """Periodic forward differences (1/mm) of x along each axis into out (3, ...)."""
    nx, ny, nz = x.shape
    for i in prange(nx):
        ip = i + 1 if i + 1 < nx else 0
        for j in range(ny):
            jp = j + 1 if j + 1 < ny else 0
            for k in range(nz):
                kp = k + 1 if k + 1 < nz else 0
                c = x[i, j, k]
                out[0, i, j, k] = (x[ip, j, k] - c) / h[0]
                out[1, i, j, k] = (x[i, jp, k] - c) / h[1]
                out[2, i, j, k] = (x[i, j, kp] - c) / h[2]


@njit(parallel=True, fastmath=True, cache=True)
def _divergence(g, h, out):
    """Periodic backward-difference divergence: out = -(`_gradient`)^T g."""
    _, nx, ny, nz = g.shape
    for i in prange(nx):
        im = i - 1 if i > 0 else nx - 1
        for j in range(ny):
            jm = j - 1 if j > 0 else ny - 1
            for k in range(nz):
                km = k - 1 if k > 0 else nz - 1
                out[i, j, k] = (
                    (g[0, i, j, k] - g[0, im, j, k]) / h[0]
                    + (g[1, i, j, k] - g[1, i, jm, k]) / h[1]
                    + (g[2, i, j, k] - g[2, i, j, km]) / h[2]
                )


def _support(mask, brain, extend_layers):
    if brain is None or extend_layers <= 0:
        return mask
    grown = ndimage.binary_dilation(mask, iterations=int(extend_layers))
    return mask | (grown & np.asarray(brain, dtype=bool))


def _checked(field_ppm, mask, voxel_size, b0_dir):
    field = np.asarray(field_ppm, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if field.shape != mask.shape or field.ndim != 3:
        raise ValueError(f"field {field.shape} and mask {mask.shape} must be the same 3-D grid")
    if not mask.any():
        raise ValueError("the mask is empty")
    if not np.isfinite(field[mask]).all():
        raise ValueError("the field has non-finite values (NaN or inf) inside the mask")
    voxel_size = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, float), (3,)))
    b = np.asarray(b0_dir, dtype=float)
    return field, mask, voxel_size, b / np.linalg.norm(b)
