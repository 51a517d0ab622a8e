"""Echo combination against a known field: analytic-sphere sources, offsets, complex noise.

The error bound is the Cramer-Rao bound of the linear phase model, written out here from the
true magnitudes and the noise sigma put in: var(f) = sigma^2 S / (S Sxx - Sx^2) / (2 pi)^2,
S = sum m^2, Sx = sum m^2 TE, Sxx = sum m^2 TE^2 (phase noise sigma / m per echo).
"""

import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.qsm.combine import COMBINERS, linear, mcpc3ds_offset, nonlinear, remove_offset
from bids_qsm.qsm.units import ppm_to_hz

SHAPE = (64, 64, 48)


def _grid(shape=SHAPE):
    return np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij", sparse=True)


def _sphere_field_ppm(x, y, z, center, radius, chi):
    """Analytic field (ppm) of a sphere (Lorentz-corrected; 0 inside), B0 along z."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    r2 = np.maximum(dx**2 + dy**2 + dz**2, 1e-9)
    outside = chi / 3 * (radius**2 / r2) ** 1.5 * (3 * dz**2 / r2 - 1)
    return np.where(r2 <= radius**2, 0.0, outside)


def _truth():
    """(mask, field Hz, receive offset rad, magnitude proton density) on 1 mm voxels, 3 T."""
    x, y, z = _grid()
    mask = (x / 28) ** 2 + (y / 26) ** 2 + (z / 20) ** 2 <= 1
    ppm = _sphere_field_ppm(x, y, z, (-8, 5, 0), 4, 0.8) + _sphere_field_ppm(
        x, y, z, (10, -6, 4), 3, -0.6
    )
    field = ppm_to_hz(ppm, 3.0) + 1.5 * x - 0.8 * z + 0.02 * (x**2 - y**2)  # shim-like
    offset = 1.2 * np.sin(x / 40 + 0.3) + 0.6 * np.cos(y / 50) + 0.4  # coil-smooth
    density = np.where(mask, 1.0 + 0.2 * np.cos(x / 9), 0.0)
    return mask, field, offset, density


def _signal(te, snr, r2star=25.0, seed=0):
    mask, field, offset, density = _truth()
    rng = np.random.default_rng(seed)
    mag = density[..., None] * np.exp(-r2star * te)
    phase = offset[..., None] + 2 * np.pi * field[..., None] * te
    sigma = 1.0 / snr
    noisy = mag * np.exp(1j * phase) + sigma * (
        rng.standard_normal(mag.shape) + 1j * rng.standard_normal(mag.shape)
    )
    # Unwrapped with the truth, so that this tests the fit alone.
    unwrapped = phase + np.angle(noisy * np.exp(-1j * phase))
    return mask, field, offset, mag, sigma, noisy, unwrapped.astype(np.float32)


def _crlb_hz(mag, te, sigma):
    w = mag**2 + 1e-30  # outside the mask: finite, unused
    s, sx, sxx = w.sum(-1), (w * te).sum(-1), (w * te**2).sum(-1)
    return sigma * np.sqrt(s / (s * sxx - sx**2)) / (2 * np.pi)


CASES = [
    # (echo times in ms, SNR of the first echo's proton density)
    ([3, 8, 13], 20),
    ([4, 7, 13, 21], 50),
    ([2.5, 5.5, 8.5, 11.5, 14.5, 17.5], 100),
    ([3, 5, 9, 14, 20, 27, 35, 44], 200),
]


def test_dispatch_keys():
    assert list(COMBINERS)[0] == "linear" and "nonlinear" in COMBINERS


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
@pytest.mark.parametrize(("te_ms", "snr"), CASES)
def test_field_error_at_noise_bound(method, te_ms, snr):
    te = np.asarray(te_ms) * 1e-3
    mask, field, _, mag, sigma, noisy, unwrapped = _signal(te, snr)
    field_hz, noise_hz = COMBINERS[method](
        unwrapped, magnitude=np.abs(noisy).astype(np.float32), mask=mask, te=te
    )
    assert field_hz.dtype == np.float32 and noise_hz.shape == mask.shape
    assert not field_hz[~mask].any() and not noise_hz[~mask].any()
    bound = np.sqrt(np.mean(_crlb_hz(mag, te, sigma)[mask] ** 2))
    rms = np.sqrt(np.mean((field_hz - field)[mask] ** 2))
    assert rms < 1.15 * bound, (rms, bound)  # measured: 1.00 x the bound
    # The noise map is a truthful reliability: its RMS matches the bound.
    reported = np.sqrt(np.mean(noise_hz[mask] ** 2))
    assert 0.9 * bound < reported < 1.1 * bound, (reported, bound)


def test_single_echo_is_phase_over_te():
    te = np.array([0.02])
    mask, field, _, _, _, noisy, _ = _signal(te, 100)
    phase = (2 * np.pi * field * te[0]).astype(np.float32)[..., None]
    field_hz, noise_hz = linear(phase, magnitude=np.abs(noisy), mask=mask, te=te)
    assert np.allclose(field_hz[mask], field[mask], atol=1e-2)
    assert (noise_hz[mask] > 0).all()


def test_offset_is_absorbed_by_the_intercept():
    te = np.array([4, 9, 14, 19]) * 1e-3
    mask, _, offset, _, _, noisy, unwrapped = _signal(te, 80)
    with_offset, _ = linear(unwrapped, magnitude=np.abs(noisy), mask=mask, te=te)
    without, _ = linear(unwrapped - offset[..., None], magnitude=np.abs(noisy), mask=mask, te=te)
    assert np.allclose(with_offset, without, atol=1e-2)


def test_mcpc3ds_recovers_a_smooth_offset():
    te = np.array([3, 7, 11]) * 1e-3
    mask, _, offset, _, _, noisy, _ = _signal(te, 100)
    estimate = mcpc3ds_offset(
        np.angle(noisy).astype(np.float32), np.abs(noisy), te, voxel_size=(1, 1, 1), mask=mask
    )
    # The smoothing (sigma 10 x 10 x 5 voxels) is biased where its kernel leaves the object.
    inner = ndimage.binary_erosion(mask, iterations=8)
    err = np.angle(np.exp(1j * (estimate - offset)))[inner]
    assert np.sqrt(np.mean(err**2)) < 0.1
    cleaned = remove_offset(np.angle(noisy), estimate)
    assert cleaned.min() >= -np.pi and cleaned.max() < np.pi


def test_nonlinear_matches_linear_without_wraps():
    te = np.array([3, 8, 13, 18, 23]) * 1e-3
    mask, _, _, _, _, noisy, unwrapped = _signal(te, 150)
    lin, _ = linear(unwrapped, magnitude=np.abs(noisy), mask=mask, te=te)
    non, _ = nonlinear(unwrapped, magnitude=np.abs(noisy), mask=mask, te=te)
    assert np.percentile(np.abs(lin - non)[mask], 99) < 0.5


def test_missing_echo_values_are_skipped():
    te = np.array([3, 8, 13, 18]) * 1e-3
    mask, field, _, _, _, noisy, unwrapped = _signal(te, 100)
    magnitude = np.abs(noisy).astype(np.float32)
    unwrapped[40, 30, 20, 1] = np.nan  # one echo's phase missing: fit the other three
    magnitude[20, 30, 20, 2] = np.inf
    for method in COMBINERS.values():
        field_hz, noise_hz = method(unwrapped, magnitude=magnitude, mask=mask, te=te)
        assert np.isfinite(field_hz).all() and np.isfinite(noise_hz).all()
        assert abs(field_hz[40, 30, 20] - field[40, 30, 20]) < 2
        assert abs(field_hz[20, 30, 20] - field[20, 30, 20]) < 2


def test_siemens_phantom_mcpc3ds_single_echo_matches_fit(shared_data):
    """After MCPC-3D-S, the last echo alone (phase / 2 pi TE) gives the multi-echo field."""
    nib = pytest.importorskip("nibabel")
    from bids_qsm.qsm.mask import otsu
    from bids_qsm.qsm.phase import scale_phase
    from bids_qsm.qsm.unwrap import romeo

    anat = shared_data / "siemens_phantom_6echo" / "sub-phantom" / "anat"

    def load(echo, part):
        path = anat / f"sub-phantom_echo-{echo}_part-{part}_MEGRE.nii.gz"
        return np.asarray(nib.load(path).dataobj, dtype=float)

    phase = np.stack([scale_phase(load(e, "phase"), units="arbitrary") for e in range(1, 7)], -1)
    mag = np.stack([load(e, "mag") for e in range(1, 7)], -1).astype(np.float32)
    te = 2.5e-3 + 3e-3 * np.arange(6)
    voxel_size = (2.1875, 2.1875, 3.0)
    mask = otsu(mag, voxel_size=voxel_size)
    field, noise = linear(
        romeo(phase, magnitude=mag, mask=mask, te=te), magnitude=mag, mask=mask, te=te
    )
    assert np.median(noise[mask]) < 2  # Hz: a clean phantom
    offset = mcpc3ds_offset(phase, mag, te, voxel_size=voxel_size, mask=mask)
    cleaned = romeo(remove_offset(phase, offset), magnitude=mag, mask=mask, te=te)
    single = cleaned[..., -1] / (2 * np.pi * te[-1])
    diff = (single - field)[mask]
    # Measured: median 0.7 Hz, median absolute deviation 2.1 Hz (the echoes are not exactly
    # linear in TE: eddy currents); a wrong offset of 0.1 rad would add 0.9 Hz everywhere.
    assert abs(np.median(diff)) < 2
    assert np.median(np.abs(diff - np.median(diff))) < 4
