"""Dipole inversion: local field (ppm) -> susceptibility (ppm).

The local field is the convolution of the susceptibility with the unit dipole,
f = D * chi, D(k) = 1/3 - (k.b)^2/|k|^2 (field = +D*chi, see `dipole.py`). D vanishes on the
magic-angle cone, so every method regularises:

- `tgv`: total generalised variation of second order with a Laplacian data term, solved by a
  primal-dual method on the mask (Langkammer et al. 2015; Bredies ISMRM 2014); see `tgv.py`.
- `tikhonov`: closed-form L2 solution with a gradient (or identity) penalty (Bilgic et al. 2014).
- `tkd`: truncated k-space division (Shmueli et al. 2009; Wharton et al. 2010).
- `tv`: L1 total variation, ADMM with closed-form Fourier updates (Bilgic et al. 2014).
- `whqsm`: total variation with a residual harmonic field fitted jointly, for the background
  that background removal leaves at the brain's edge (Milovic et al. 2019); see
  `harmonic_inversion.py`.
- `tfi`: total variation with sources outside the mask fitted too, penalised 30 times less
  (preconditioned total field inversion, Liu et al. 2017); see `harmonic_inversion.py`.

All methods share `f(local_field_ppm, mask, *, voxel_size, b0_dir, <options>) -> chi_ppm`:
float32, 0 outside the mask, computed on the mask's bounding box padded with zeros for the FFT.
`tgv_single_step` (not in the table: it takes the wrapped phase of one echo, not a local field)
is TGV-QSM from the phase directly, without unwrapping or background removal.
"""

import logging

import numpy as np
import scipy.fft
from scipy import ndimage

from . import tgv as _tgv
from .dipole import dipole_kernel
from .fftbox import FFTBox, bounding_box, fft_pad, gradient_power, half_spectrum, irfftn, rfftn
from .harmonic_inversion import tfi, wh_qsm

logger = logging.getLogger(__name__)


def _checked(field_ppm, mask, voxel_size, b0_dir):
    field = np.asarray(field_ppm, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if field.shape != mask.shape or field.ndim != 3:
        raise ValueError(f"field {field.shape} and mask {mask.shape} must be the same 3-D grid")
    voxel_size = tuple(float(v) for v in voxel_size)
    b = np.asarray(b0_dir, dtype=float)
    return field, mask, voxel_size, b / np.linalg.norm(b)


def tkd(local_field_ppm, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold=0.19):
    """Truncated k-space division: chi = F^-1[F(f) / D_t] (ppm).

    local_field_ppm: local (tissue) field, ppm; mask: bool; voxel_size: mm; b0_dir: unit B0
    vector in voxel axes. Where |D| < `threshold` the kernel is replaced by threshold*sign(D)
    (the k = 0 term, D = 0, is set to zero: the mean of chi is not determined by the field).
    No correction of the resulting underestimation is applied. Returns chi (ppm), float32,
    0 outside the mask.
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    box = FFTBox(mask, fft_pad(mask))
    kernel = half_spectrum(dipole_kernel(box.shape, voxel_size, b))
    small = np.abs(kernel) < threshold
    truncated = np.where(small, np.where(kernel < 0, -threshold, threshold), kernel)
    inverse = (1.0 / truncated).astype(np.float32)
    inverse[0, 0, 0] = 0.0
    chi = irfftn(rfftn(box.crop(field * mask)) * inverse, box.shape)
    return box.paste(chi, mask)


def tikhonov(
    local_field_ppm,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    regularization=0.05,
    penalty="gradient",
):
    """Closed-form Tikhonov inversion: argmin ||D chi - f||^2 + lambda ||G chi||^2 (ppm).

    local_field_ppm: local field, ppm; mask: bool; voxel_size: mm; b0_dir: unit B0 vector in
    voxel axes. `penalty` "gradient" uses forward differences (G in 1/mm, so `regularization`
    lambda is in mm^2 and its effect does not depend on the grid's voxel size); "identity" uses
    G = 1 (lambda dimensionless). chi = F^-1[D F(f) / (D^2 + lambda |G|^2)], with the
    undetermined k = 0 term set to zero. Returns chi (ppm), float32, 0 outside the mask.
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    box = FFTBox(mask, fft_pad(mask))
    kernel = half_spectrum(dipole_kernel(box.shape, voxel_size, b))
    if penalty == "gradient":
        power = gradient_power(box.shape, voxel_size)
    elif penalty == "identity":
        power = np.float32(1.0)
    else:
        raise ValueError(f"penalty must be 'gradient' or 'identity', not {penalty!r}")
    denominator = kernel**2 + np.float32(regularization) * power
    inverse = np.divide(kernel, denominator, out=np.zeros_like(kernel), where=denominator > 0)
    inverse[0, 0, 0] = 0.0
    chi = irfftn(rfftn(box.crop(field * mask)) * inverse, box.shape)
    return box.paste(chi, mask)


def _forward_diff(x, voxel_size):
    """Periodic forward differences (1/mm) along each axis, stacked (3, ...)."""
    return np.stack([(np.roll(x, -1, axis=a) - x) / h for a, h in enumerate(voxel_size)])


def _backward_div(g, voxel_size):
    """-(forward difference)^T for periodic boundaries: sum of backward differences."""
    return sum((g[a] - np.roll(g[a], 1, axis=a)) / h for a, h in enumerate(voxel_size))


def tv(
    local_field_ppm,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    regularization=0.001,
    penalty_rho=100.0,
    iterations=40,
):
    """Total-variation (L1) inversion by ADMM with closed-form Fourier updates (ppm).

    argmin 1/2 ||D chi - f||^2 + lambda ||grad chi||_1 (anisotropic L1 of forward differences in
    1/mm, so lambda = `regularization` is in ppm mm), split as z = grad chi (Bilgic et al. 2014,
    "fast L1"): chi = F^-1[(D F f + rho G^H F(z - u)) / (D^2 + rho |G|^2)], z = shrink(grad chi
    + u, lambda/rho), u += grad chi - z, with rho = `penalty_rho` * lambda, `iterations` times.
    local_field_ppm: local field, ppm; mask: bool; voxel_size: mm; b0_dir: unit B0 vector in
    voxel axes. The field is zero outside the mask. Returns chi (ppm), float32, 0 outside.
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    box = FFTBox(mask, fft_pad(mask))
    kernel = half_spectrum(dipole_kernel(box.shape, voxel_size, b))
    rho = np.float32(penalty_rho * regularization)
    denominator = kernel**2 + rho * gradient_power(box.shape, voxel_size)
    denominator[0, 0, 0] = 1.0  # the mean of chi is not determined; keep it at zero
    data = kernel * rfftn(box.crop(field * mask))
    threshold = np.float32(regularization / rho)
    z = np.zeros((3, *box.shape), dtype=np.float32)
    u = np.zeros_like(z)
    chi = np.zeros(box.shape, dtype=np.float32)
    for _ in range(iterations):
        rhs = data - rho * rfftn(_backward_div(z - u, voxel_size))
        rhs[0, 0, 0] = 0.0
        chi = irfftn(rhs / denominator, box.shape)
        g = _forward_diff(chi, voxel_size)
        v = g + u
        z = np.sign(v) * np.maximum(np.abs(v) - threshold, 0.0)
        u = v - z
    return box.paste(chi, mask)


# TGV's first-order weight per unit of phase noise (rad): 1/8 of the former fixed strength at the
# noise of the qsm-forward simulation of the COSMOS map (SNR 100), checked on the head fixtures
# (docs/validation.md). Where the noise is not known, a fixed weight of a quarter of the former.
TGV_ALPHA_PER_NOISE = 0.08
TGV_ALPHA1_WITHOUT_NOISE = 0.004


def tgv(
    local_field_ppm,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    alpha1=None,
    alpha0=None,
    alpha_per_noise=TGV_ALPHA_PER_NOISE,
    noise_ppm=None,
    te=0.02,
    b0_tesla=3.0,
    iterations=1000,
    tol=3e-4,
    init="tkd",
    brain=None,
    extend_layers=1,
    report=None,
):
    """TGV-QSM of a local (background-removed) field: chi (ppm), float32, 0 outside the mask.

    local_field_ppm: local field, ppm; mask: bool, where the local field is valid; voxel_size:
    mm; b0_dir: unit B0 vector in voxel axes (oblique B0 is exact: the dipole operator is a
    13-point stencil, see `tgv.py`). brain: optional bool brain mask; chi is then also estimated,
    from the regulariser alone, on the brain voxels up to `extend_layers` voxels (face steps)
    outside `mask`, which gives back the layer that background removal erodes.

    Alpha convention (that of the public TGV-QSM code): `alpha1` weighs ||grad chi - w||_1 and
    `alpha0` weighs ||E w||_1, for a field expressed as phase in rad at echo time `te` (s) and
    field strength `b0_tesla` (T), with h in mm. The field is converted to that phase,
    phi = f * 2 pi gamma_bar b0 te, solved, and chi converted back to ppm (in ppm, both alphas
    are divided by 2 pi gamma_bar b0 te). For several echoes `te` is the noise-equivalent echo
    time, sqrt(sum TE_i^2).

    Regularisation tied to the data: with `alpha1` None the strength follows the field's own
    noise. noise_ppm is the typical standard error of the field (ppm; the median of the echo
    fit's noise map over the mask, passed by the pipeline), so the phase noise at `te` is
    sigma = noise_ppm * 2 pi gamma_bar b0 te (rad) and alpha1 = `alpha_per_noise` * sigma: a
    noisier scan is regularised more, a cleaner one keeps its contrast. `alpha_per_noise` was
    chosen on a forward simulation of a real brain (the COSMOS map through qsm-forward, SNR 100)
    for NRMSE, HFEN and a slope against the truth near 1 together, and checked on the COSMOS map
    in the simulated head at SNR 50 and on the head phantom (docs/validation.md). Without a
    noise estimate (a single echo, a field given in ppm) alpha1 = `TGV_ALPHA1_WITHOUT_NOISE`.
    alpha0 None means 3 alpha1, the public code's ratio. The values used land in `report`
    (`alpha1`, `alpha0`).

    iterations: the most primal-dual iterations at 1 mm^3 voxels, scaled by 1/sqrt(voxel
    volume) for finer grids (never fewer); tol > 0 stops early, once the relative change of chi
    in one iteration falls below it (0: run them all). On the 2016 challenge data 3e-4 stops
    after 560 iterations, with RMSE / HFEN 60.1 / 56.6 % against 59.6 / 57.4 % after 1000
    (docs/validation.md).
    init: "tkd" starts from the `tkd` solution at threshold 0.15 (the primal-dual method corrects
    local detail fast and the smooth components slowly; TKD gets the smooth components and the
    contrast nearly right, where the smoothing Tikhonov start left the map shrunk unless run
    for thousands of iterations), "tikhonov" from the closed-form `tikhonov` solution, "tv"
    from the `tv` solution, "zero" from chi = 0 as the original. The data term holds on the mask
    eroded by one voxel (faces and edges); chi on the outer layer comes from the regulariser.
    report: optional dict that receives `iterations_run`, the iterations actually made (after
    the scaling for resolution and the convergence test).
    """
    field, mask, voxel_size, b = _checked(local_field_ppm, mask, voxel_size, b0_dir)
    scale = np.float32(_tgv.rad_per_ppm(te, b0_tesla))
    if alpha1 is None:
        alpha1 = (
            TGV_ALPHA1_WITHOUT_NOISE
            if noise_ppm is None
            else float(alpha_per_noise) * float(noise_ppm) * float(scale)
        )
    alpha0 = 3.0 * alpha1 if alpha0 is None else alpha0
    phase = np.pad(np.where(mask, field, 0.0) * scale, 1)
    lap = _tgv.laplacian(phase, voxel_size)[1:-1, 1:-1, 1:-1]
    chi0 = _initial(field, mask, voxel_size, b, init)
    support = mask
    if brain is not None and extend_layers > 0:
        grown = ndimage.binary_dilation(mask, iterations=int(extend_layers))
        support = mask | (grown & np.asarray(brain, dtype=bool))
    chi, done = _tgv.solve_in_mask(
        lap, support, voxel_size=voxel_size, b0_dir=b, alpha1=alpha1, alpha0=alpha0,
        iterations=iterations, tol=tol, chi0=None if chi0 is None else chi0 * scale,
        data_mask=mask,
    )  # fmt: skip
    logger.info("TGV-QSM: alpha1 %.4g, alpha0 %.4g, %d iterations", alpha1, alpha0, done)
    if report is not None:
        report.update(iterations_run=done, alpha1=float(alpha1), alpha0=float(alpha0))
    return chi / scale


def _initial(field_ppm, mask, voxel_size, b0_dir, init):
    if init == "zero":
        return None
    if init == "tkd":
        return tkd(field_ppm, mask, voxel_size=voxel_size, b0_dir=b0_dir, threshold=0.15)
    if init == "tikhonov":
        return tikhonov(field_ppm, mask, voxel_size=voxel_size, b0_dir=b0_dir)
    if init == "tv":
        return tv(field_ppm, mask, voxel_size=voxel_size, b0_dir=b0_dir)
    raise ValueError(f"init must be 'tkd', 'tikhonov', 'tv' or 'zero', not {init!r}")


def tgv_single_step(
    phase_rad,
    mask,
    *,
    voxel_size,
    b0_dir=(0.0, 0.0, 1.0),
    te,
    b0_tesla,
    alpha1=0.016,
    alpha0=0.048,
    erosions=3,
    iterations=1000,
    tol=3e-4,
    init="tikhonov",
):
    """Single-step TGV-QSM from the wrapped phase (rad) of one echo: chi (ppm), float32.

    phase_rad: wrapped phase in rad at echo time `te` (s), field strength `b0_tesla` (T);
    mask: bool brain mask; voxel_size: mm; b0_dir: unit B0 vector in voxel axes. Unwrapping and
    background removal are implicit: the Laplacian of the phase comes from sin and cos of the
    wrapped phase (wraps cancel), and fields of sources outside the mask are harmonic inside it,
    so the Laplacian data term ignores them. The mask is eroded `erosions` times (6-connected),
    as in the original, because the phase Laplacian is unreliable at the brain's edge; chi is 0
    outside the eroded mask. Alphas as in `tgv` (phase in rad at `te`). init "tikhonov" starts
    from the closed-form solution for the local phase Lap^-1(Lap phi) (zero on the box faces),
    "zero" from chi = 0. iterations, tol: as in `tgv`.
    """
    phase = np.asarray(phase_rad, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if phase.shape != mask.shape or phase.ndim != 3:
        raise ValueError(f"phase {phase.shape} and mask {mask.shape} must be the same 3-D grid")
    if erosions:
        mask = ndimage.binary_erosion(mask, iterations=erosions)
    voxel_size = tuple(float(v) for v in voxel_size)
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    scale = np.float32(_tgv.rad_per_ppm(te, b0_tesla))
    lap = _tgv.wrapped_laplacian(phase, voxel_size)
    mask0 = ndimage.binary_erosion(mask, _tgv.FOOTPRINT)
    chi0 = None
    if init != "zero":
        local = _poisson_dirichlet(np.where(mask0, lap, 0.0), mask, voxel_size) / scale
        chi0 = _initial(local, mask, voxel_size, b, init)
    chi, done = _tgv.solve_in_mask(
        lap, mask, voxel_size=voxel_size, b0_dir=b, alpha1=alpha1, alpha0=alpha0,
        iterations=iterations, tol=tol, chi0=None if chi0 is None else chi0 * scale,
    )  # fmt: skip
    logger.info("single-step TGV-QSM: %d iterations", done)
    return chi / scale


def _poisson_dirichlet(rhs, mask, voxel_size):
    """u with Lap u = rhs (7-point) on the mask's box, u = 0 just outside the box (DST-I).

    Gives a local phase estimate from its Laplacian for the initial guess only; the harmonic
    part it gets wrong is ignored by the Laplacian data term of TGV anyway.
    """
    bbox = bounding_box(mask)
    sub = np.asarray(rhs[bbox], dtype=np.float64)
    coeffs = scipy.fft.dstn(sub, type=1, workers=-1)
    eig = 0.0
    for axis, (n, h) in enumerate(zip(sub.shape, voxel_size, strict=True)):
        k = np.arange(1, n + 1)
        shape = [1, 1, 1]
        shape[axis] = n
        eig = eig + ((2.0 * np.cos(np.pi * k / (n + 1)) - 2.0) / h**2).reshape(shape)
    u = scipy.fft.idstn(coeffs / eig, type=1, workers=-1)
    out = np.zeros(mask.shape, dtype=np.float32)
    out[bbox] = u
    return np.where(mask, out, 0.0)


INVERSIONS = {
    "tgv": tgv,
    "tikhonov": tikhonov,
    "tkd": tkd,
    "tv": tv,
    "whqsm": wh_qsm,
    "tfi": tfi,
}
