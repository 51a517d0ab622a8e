"""R2* against a known mono-exponential decay with Rician noise at realistic SNR."""

import numpy as np
import pytest

from bids_qsm.qsm.relaxometry import (
    R2STAR_MAX,
    RELAXOMETRY,
    arlo,
    loglinear,
    t2star_from_r2star,
)

SHAPE = (48, 48, 32)


def _decay(te, snr=100.0, seed=0):
    """(mask, true R2* (1/s), noisy magnitude): R2* from 15 (white matter-like) to 80 1/s."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mask = x**2 + y**2 + z**2 <= 0.8
    r2star = 15.0 + 65.0 * (x + 1) / 2
    s0 = 1.0 + 0.3 * y
    rng = np.random.default_rng(seed)
    signal = s0[..., None] * np.exp(-r2star[..., None] * te)
    noisy = np.abs(signal + (rng.standard_normal(signal.shape) + 1j * rng.standard_normal(
        signal.shape)) / snr)  # fmt: skip
    return mask, r2star, noisy.astype(np.float32)


def test_dispatch_keys():
    assert list(RELAXOMETRY)[0] == "loglinear" and "arlo" in RELAXOMETRY


@pytest.mark.parametrize("method", ["loglinear", "arlo"])
def test_r2star_within_ten_percent(method):
    te = np.arange(1, 8) * 4e-3  # 4..28 ms, equal spacing
    mask, truth, mag = _decay(te)
    r2 = RELAXOMETRY[method](mag, te=te, mask=mask)
    assert r2.dtype == np.float32 and not r2[~mask].any()
    rel = np.abs(r2 - truth)[mask] / truth[mask]
    assert np.median(rel) < 0.05 and np.percentile(rel, 90) < 0.10


def test_loglinear_unequal_spacing():
    te = np.array([3.0, 5.0, 9.0, 14.0, 22.0, 31.0]) * 1e-3
    mask, truth, mag = _decay(te)
    rel = np.abs(loglinear(mag, te=te, mask=mask) - truth)[mask] / truth[mask]
    assert np.percentile(rel, 90) < 0.10


def test_arlo_agrees_with_loglinear():
    te = np.arange(1, 7) * 5e-3
    mask, _, mag = _decay(te, snr=200)
    a, b = arlo(mag, te=te, mask=mask), loglinear(mag, te=te, mask=mask)
    assert np.median(np.abs(a - b)[mask] / b[mask]) < 0.03


def test_arlo_exact_without_noise():
    te = np.arange(1, 6) * 5e-3
    r2 = np.array([10.0, 30.0, 60.0])
    mag = np.exp(-r2[:, None] * te)[:, None, None, :]
    # Simpson's rule error is O((R2* dt)^4): tiny at brain R2* and 5 ms spacing.
    assert np.allclose(arlo(mag, te=te)[:, 0, 0], r2, rtol=1e-3)
    assert np.allclose(loglinear(mag, te=te)[:, 0, 0], r2, rtol=1e-5)


def test_arlo_needs_equal_spacing_and_three_echoes():
    mask, _, mag = _decay(np.array([4e-3, 8e-3, 12e-3]))
    with pytest.raises(ValueError, match="loglinear"):
        arlo(mag, te=[4e-3, 8e-3, 13e-3], mask=mask)
    with pytest.raises(ValueError, match="loglinear"):
        arlo(mag[..., :2], te=[4e-3, 8e-3], mask=mask)


def test_clipping_and_missing_values():
    te = np.array([5e-3, 10e-3, 15e-3])
    mag = np.ones((4, 1, 1, 3), np.float32)
    mag[0] = np.exp(5.0 * te)  # growing signal: R2* < 0 -> 0
    mag[1] = np.exp(-1500.0 * te)  # signal gone after the first echo: -> R2STAR_MAX
    mag[2, ..., 1] = np.nan  # a missing echo must not poison the voxel
    mag[3] = 0.0  # no signal at all
    r2 = loglinear(mag, te=te)
    assert r2[0, 0, 0] == 0 and r2[1, 0, 0] == R2STAR_MAX
    assert np.isfinite(r2).all() and r2[3, 0, 0] == 0


def test_t2star():
    r2 = np.array([0.0, 20.0, 50.0], dtype=np.float32)
    assert np.allclose(t2star_from_r2star(r2), [0.0, 0.05, 0.02])
