"""Unwrapping against a known phase: analytic sphere fields, shim-like background, offsets.

A correct unwrapping differs from the true phase by one multiple of 2 pi per echo (the global
multiple is unknowable); any voxel whose difference from the echo's median is off by 2 pi is a
residual wrap. Real data: the Siemens phantom (every echo pair must give the same field) and an
in vivo crop with a vein (no jump above pi between neighbours inside the mask).
"""

import numpy as np
import pytest

from bids_qsm.qsm.phase import scale_phase
from bids_qsm.qsm.units import ppm_to_hz
from bids_qsm.qsm.unwrap import UNWRAPPERS, voxel_quality

SHAPE = (64, 64, 48)


def _sphere_field_ppm(x, y, z, center, radius, chi):
    """Analytic field (ppm) of a sphere (Lorentz-corrected; 0 inside), B0 along z."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    r2 = np.maximum(dx**2 + dy**2 + dz**2, 1e-9)
    outside = chi / 3 * (radius**2 / r2) ** 1.5 * (3 * dz**2 / r2 - 1)
    return np.where(r2 <= radius**2, 0.0, outside)


def _phantom(te, snr=100.0, seed=0):
    """(mask, true phase (rad, 4-D), noisy wrapped phase, magnitude); 1 mm voxels, 3 T."""
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij")
    mask = (x / 28) ** 2 + (y / 26) ** 2 + (z / 20) ** 2 <= 1
    # Air below the brain (sinus-like, outside the mask) and a vein-like and a calcification-like
    # sphere inside it, plus linear and quadratic shim terms: many wraps at the later echoes.
    ppm = (
        _sphere_field_ppm(x, y, z, (0, 14, -40), 12, 9.4)
        + _sphere_field_ppm(x, y, z, (-9, 4, 2), 5, 0.3)
        + _sphere_field_ppm(x, y, z, (10, -8, -3), 4, -0.3)
    )
    field = ppm_to_hz(ppm, 3.0) + 4.0 * x - 3.0 * z + 0.03 * (x**2 - y**2)
    offset = 1.5 * np.sin(x / 30) + np.cos(y / 40)
    rng = np.random.default_rng(seed)
    mag = np.where(mask, 1.0, 0.0)[..., None] * np.exp(-30.0 * te)  # noise outside
    phase = offset[..., None] + 2 * np.pi * field[..., None] * te
    noisy = (
        mag * np.exp(1j * phase)
        + (rng.standard_normal(mag.shape) + 1j * rng.standard_normal(mag.shape)) / snr
    )
    return mask, phase, np.angle(noisy).astype(np.float32), np.abs(noisy).astype(np.float32)


def _wraps(unwrapped, truth, mask):
    """Residual 2 pi errors per echo: voxels whose error is not the echo's common multiple."""
    err = (unwrapped - truth)[mask]
    return np.count_nonzero(np.round((err - np.median(err, axis=0)) / (2 * np.pi)), axis=0)


def test_dispatch_keys():
    assert {"laplacian", "romeo"} <= set(UNWRAPPERS)


@pytest.mark.parametrize("method", ["laplacian", "romeo"])
@pytest.mark.parametrize("snr", [100.0, 10.0])
def test_no_residual_wraps_on_synthetic_brain(method, snr):
    te = np.array([3.0, 6.5, 11.0, 15.0, 22.0]) * 1e-3  # unequal spacing
    mask, truth, wrapped, mag = _phantom(te, snr=snr)  # at SNR 5 the last echoes start to fail
    # The phantom must really wrap, or the test proves nothing.
    assert np.ptp(truth[..., -1][mask]) > 10 * np.pi
    out = UNWRAPPERS[method](wrapped, magnitude=mag, mask=mask, te=te, voxel_size=(1, 1, 1))
    assert out.dtype == np.float32 and out.shape == wrapped.shape
    assert not out[~mask].any()
    assert _wraps(out, truth, mask).tolist() == [0] * te.size
    # Congruent to the data: only whole turns were added.
    turns = (out - wrapped)[mask] / (2 * np.pi)
    assert np.abs(turns - np.round(turns)).max() < 1e-3


@pytest.mark.parametrize("method", ["laplacian", "romeo"])
def test_single_echo(method):
    te = np.array([0.012])
    mask, truth, wrapped, mag = _phantom(te)
    out = UNWRAPPERS[method](wrapped[..., 0], magnitude=mag[..., 0], mask=mask, te=te,
                             voxel_size=(1, 1, 1))  # fmt: skip
    assert out.shape == (*SHAPE, 1)
    assert _wraps(out, truth, mask).tolist() == [0]


def test_voxel_quality_separates_signal_from_noise():
    te = np.array([4.0, 8.0]) * 1e-3
    mask, _, wrapped, mag = _phantom(te)
    quality = voxel_quality(wrapped, magnitude=mag, te=te)
    inner = np.zeros_like(mask)
    inner[20:44, 20:44, 16:32] = True
    outer = ~np.pad(np.ones((48, 48, 36), bool), ((8, 8), (8, 8), (6, 6)))
    assert np.median(quality[inner & mask]) > 0.8
    assert np.median(quality[outer]) < 0.3


def _neighbour_jumps(phase, mask, axes=(0, 1, 2)):
    count = 0
    for axis in axes:
        both = np.diff(mask.astype(np.int8), axis=axis) == 0
        both &= np.take(mask, range(1, mask.shape[axis]), axis=axis)
        count += np.count_nonzero(np.abs(np.diff(phase, axis=axis))[both] > np.pi)
    return count


@pytest.mark.parametrize("method", ["laplacian", "romeo"])
def test_siemens_phantom_echo_pairs_agree(shared_data, method):
    nib = pytest.importorskip("nibabel")
    from bids_qsm.qsm.combine import linear
    from bids_qsm.qsm.mask import otsu

    anat = shared_data / "siemens_phantom_6echo" / "sub-phantom" / "anat"
    load = lambda e, part: np.asarray(  # noqa: E731
        nib.load(anat / f"sub-phantom_echo-{e}_part-{part}_MEGRE.nii.gz").dataobj, float
    )
    phase = np.stack([scale_phase(load(e, "phase"), units="arbitrary") for e in range(1, 7)], -1)
    mag = np.stack([load(e, "mag") for e in range(1, 7)], -1).astype(np.float32)
    te = 2.5e-3 + 3e-3 * np.arange(6)
    voxel_size = (2.1875, 2.1875, 3.0)
    mask = otsu(mag, voxel_size=voxel_size)
    assert mask.sum() > 15000  # the phantom's disc in 10 slices
    out = UNWRAPPERS[method](phase, magnitude=mag, mask=mask, te=te, voxel_size=voxel_size)
    field, _ = linear(out, magnitude=mag, mask=mask, te=te)
    # A residual wrap in one echo shifts a pair's field by 1 / 3 ms = 333 Hz.
    for n in range(5):
        pair = (out[..., n + 1] - out[..., n])[mask] / (2 * np.pi * 3e-3)
        assert np.abs(pair - field[mask]).max() < 150
        assert np.percentile(np.abs(pair - field[mask]), 99) < 30
    assert 60 < np.median(field[mask]) < 130  # README: about 85 Hz; here 106 Hz in this mask
    # In-plane neighbours do not jump by more than pi (the slices are 3 mm: z has real steps);
    # one dark rim voxel of the last slice has a real steep gradient (its step grows with TE).
    for n in range(6):
        assert _neighbour_jumps(out[..., n], mask, axes=(0, 1)) <= 2


@pytest.mark.parametrize("method", ["laplacian", "romeo"])
def test_invivo_crop_is_smooth(shared_data, method):
    nib = pytest.importorskip("nibabel")
    from bids_qsm.qsm.mask import otsu

    folder = shared_data / "invivo_crop_3echo"
    phase = scale_phase(np.asarray(nib.load(folder / "Phase.nii").dataobj), units="arbitrary")
    mag = np.asarray(nib.load(folder / "Mag.nii").dataobj, dtype=np.float32)
    te = np.array([4.0, 8.0, 12.0]) * 1e-3
    voxel_size = (0.47, 0.47, 1.0)
    mask = otsu(mag, voxel_size=voxel_size)
    out = UNWRAPPERS[method](phase, magnitude=mag, mask=mask, te=te, voxel_size=voxel_size)
    assert mask.mean() > 0.95  # the crop lies inside the brain
    assert _neighbour_jumps(out[..., 0], mask) == 0
    # Where the vein crosses the first two slices it makes real steps above pi between
    # neighbours at 8 and 12 ms (both methods agree; they grow with TE); elsewhere no jumps.
    for n in range(3):
        assert _neighbour_jumps(out[:, :, 2:, n], mask[:, :, 2:]) == 0


@pytest.mark.parametrize("method", ["laplacian", "romeo"])
def test_missing_voxels_do_not_spread(method):
    te = np.array([3.0, 6.5, 11.0]) * 1e-3
    mask, truth, wrapped, mag = _phantom(te)
    missing = np.zeros(mask.shape, bool)
    missing[30:33, 30:33, 20:23] = True
    wrapped[missing, 1] = np.nan
    mag[missing, 2] = np.inf
    out = UNWRAPPERS[method](wrapped, magnitude=mag, mask=mask, te=te, voxel_size=(1, 1, 1))
    assert np.isfinite(out).all()
    assert _wraps(out, truth, mask & ~missing).tolist() == [0] * te.size


def test_romeo_unwraps_every_component_of_the_mask():
    te = np.array([3.0, 6.5, 11.0]) * 1e-3
    mask, truth, wrapped, mag = _phantom(te)
    left, right = mask.copy(), mask.copy()
    left[SHAPE[0] // 2 - 2 :] = False
    right[: SHAPE[0] // 2 + 2] = False
    out = UNWRAPPERS["romeo"](wrapped, magnitude=mag, mask=left | right, te=te)
    # Each component has its own (unknowable) multiple of 2 pi, but no wraps inside it.
    assert _wraps(out, truth, left).tolist() == [0] * te.size
    assert _wraps(out, truth, right).tolist() == [0] * te.size
