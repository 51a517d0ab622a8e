"""Property-based tests of the numerical layer (hypothesis): random grids, voxel sizes, echo
counts and B0 directions never crash the stages nor put NaN in the mask, and the documented
invariants hold.

Invariants (from the physics, not from the code):
- the phase of an echo is known modulo 2 pi, so adding 2 pi k to an echo does not change the
  fitted field;
- every inversion but the L1-regularised ones is linear, so scaling the field scales chi (and
  TGV's, with its weights scaled alike, is 1-homogeneous);
- QSM fixes chi only up to a constant, so a referenced map does not change when chi is shifted.

Grids are small (14-26 voxels a side) and examples few, to keep the file at seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bids_qsm.qsm.combine import COMBINERS
from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.invert import tgv, tikhonov, tkd
from bids_qsm.qsm.mask import otsu
from bids_qsm.qsm.phase import wrap
from bids_qsm.qsm.reference import REFERENCES
from bids_qsm.qsm.units import GAMMA_BAR_HZ_PER_T
from bids_qsm.qsm.unwrap import UNWRAPPERS

B0_TESLA = 3.0
SETTINGS = settings(
    max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt:skip

shapes = st.tuples(*[st.integers(14, 26)] * 3)
voxel_sizes = st.tuples(*[st.sampled_from([0.6, 0.8, 1.0, 1.3, 2.0, 2.5])] * 3)
b0_directions = (
    st.tuples(*[st.floats(-1, 1)] * 3)
    .filter(lambda v: np.linalg.norm(v) > 0.3)
    .map(lambda v: tuple(float(x) for x in np.asarray(v) / np.linalg.norm(v)))
)
echo_times = st.builds(
    lambda first, spacing, n: tuple(first + spacing * i for i in range(n)),
    st.floats(0.002, 0.008), st.floats(0.003, 0.010), st.integers(1, 4),
)  # fmt:skip


def _head(shape, voxel_size, b0_dir, seed):
    """(chi ppm, mask) of a ball-like 'brain' with a few sources, and its field (ppm)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, np.float32)[:, None, None, None] - 1) / 2
    radius = 0.36 * np.asarray(shape, np.float32)[:, None, None, None]
    mask = (((grid - centre) / radius) ** 2).sum(0) < 1
    chi = np.zeros(shape, np.float32)
    for _ in range(3):
        at = centre[:, 0, 0, 0] + rng.uniform(-0.5, 0.5, 3) * radius[:, 0, 0, 0]
        blob = (((grid - at[:, None, None, None]) / 2.0) ** 2).sum(0) < 1
        chi[blob & mask] = rng.uniform(-0.2, 0.3)
    field = forward_field(chi, voxel_size, b0_dir).astype(np.float32)
    return chi, mask, field


def _echoes(field_ppm, mask, te, seed):
    """Wrapped phase (rad) and magnitude of `field_ppm` at echo times `te` (s), 4-D."""
    rng = np.random.default_rng(seed)
    hz = field_ppm * np.float32(GAMMA_BAR_HZ_PER_T * B0_TESLA * 1e-6)
    te = np.asarray(te, np.float32)
    phase = wrap(2 * np.pi * hz[..., None] * te + 0.3)
    magnitude = np.where(mask, 100.0, 2.0)[..., None] * np.exp(-te / 0.05)
    magnitude = (magnitude + rng.uniform(0, 1, magnitude.shape)).astype(np.float32)
    return phase, magnitude


def _field_hz(phase, magnitude, mask, te, voxel_size, unwrap="romeo", combine="linear"):
    unwrapped = UNWRAPPERS[unwrap](phase, magnitude=magnitude, mask=mask, te=te,
                                   voxel_size=voxel_size)  # fmt:skip
    field, noise = COMBINERS[combine](unwrapped, magnitude=magnitude, mask=mask, te=te,
                                      voxel_size=voxel_size)  # fmt:skip
    return field, noise


@SETTINGS
@given(shapes, voxel_sizes, b0_directions, echo_times, st.sampled_from(["romeo", "laplacian"]),
       st.sampled_from(["linear", "nonlinear"]), st.integers(0, 2**16))  # fmt:skip
def test_stages_never_crash_nor_leave_nan_in_the_mask(shape, voxel_size, b0_dir, te, unwrap,
                                                      combine, seed):  # fmt:skip
    _, truth_mask, field = _head(shape, voxel_size, b0_dir, seed)
    phase, magnitude = _echoes(field, truth_mask, te, seed)
    mask = otsu(magnitude, voxel_size=voxel_size)
    assert mask.shape == shape and mask.dtype == bool and mask.any()
    field_hz, noise = _field_hz(phase, magnitude, mask, te, voxel_size, unwrap, combine)
    assert np.isfinite(field_hz[mask]).all() and np.isfinite(noise[mask]).all()
    ppm = field_hz / np.float32(GAMMA_BAR_HZ_PER_T * B0_TESLA * 1e-6)
    for invert in (tkd, tikhonov):
        chi = invert(ppm, mask, voxel_size=voxel_size, b0_dir=b0_dir)
        referenced = REFERENCES["mean"](chi, mask)
        assert np.isfinite(referenced[mask]).all()
        assert np.all(referenced[~mask] == 0)


@SETTINGS
@given(shapes, voxel_sizes, b0_directions, echo_times.filter(lambda te: len(te) >= 2),
       st.data(), st.integers(0, 2**16))  # fmt:skip
def test_adding_2_pi_k_to_an_echo_does_not_change_the_field(shape, voxel_size, b0_dir, te,
                                                            data, seed):  # fmt:skip
    _, mask, field = _head(shape, voxel_size, b0_dir, seed)
    phase, magnitude = _echoes(0.05 * field, mask, te, seed)  # gentle: no unwrapping doubt
    echo = data.draw(st.integers(0, len(te) - 1), label="echo")
    k = data.draw(st.integers(-3, 3).filter(bool), label="k")
    shifted = phase.copy()
    shifted[..., echo] += np.float32(2 * np.pi * k)
    reference, _ = _field_hz(phase, magnitude, mask, te, voxel_size)
    field_hz, _ = _field_hz(shifted, magnitude, mask, te, voxel_size)
    # float32 rounding of phase + 2 pi k is ~1e-6 rad: ~1e-4 Hz at these echo times
    np.testing.assert_allclose(field_hz[mask], reference[mask], atol=1e-2)


@SETTINGS
@given(shapes, voxel_sizes, b0_directions, st.sampled_from([0.5, 2.0, -3.0, 7.5]),
       st.integers(0, 2**16))  # fmt:skip
def test_scaling_the_field_scales_chi(shape, voxel_size, b0_dir, factor, seed):
    _, mask, field = _head(shape, voxel_size, b0_dir, seed)
    for invert in (tkd, tikhonov):
        chi = invert(field, mask, voxel_size=voxel_size, b0_dir=b0_dir)
        scaled = invert(np.float32(factor) * field, mask, voxel_size=voxel_size, b0_dir=b0_dir)
        scale = np.abs(chi[mask]).max() * abs(factor)
        assume(scale > 0)
        np.testing.assert_allclose(scaled[mask], factor * chi[mask], atol=1e-5 * scale)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(st.tuples(*[st.integers(14, 18)] * 3), voxel_sizes, b0_directions,
       st.sampled_from([0.5, 2.0, 4.0]), st.integers(0, 2**16))  # fmt:skip
def test_tgv_with_its_weights_scaled_alike_is_homogeneous(shape, voxel_size, b0_dir, factor,
                                                          seed):  # fmt:skip
    _, mask, field = _head(shape, voxel_size, b0_dir, seed)
    common = {"voxel_size": voxel_size, "b0_dir": b0_dir, "iterations": 40, "tol": 0.0}
    chi = tgv(field, mask, alpha1=0.016, alpha0=0.048, **common)
    scaled = tgv(np.float32(factor) * field, mask, alpha1=0.016 * factor,
                 alpha0=0.048 * factor, **common)  # fmt:skip
    scale = np.abs(chi[mask]).max() * factor
    assume(scale > 0)
    np.testing.assert_allclose(scaled[mask], factor * chi[mask], atol=1e-4 * scale)


@SETTINGS
@given(shapes, st.floats(-5, 5).filter(lambda c: abs(c) > 1e-3), st.integers(0, 2**16),
       st.sampled_from(["mean", "labels"]))  # fmt:skip
def test_shifting_chi_by_a_constant_leaves_the_referenced_map(shape, constant, seed, method):
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=shape) < 0.7
    labels = rng.integers(0, 4, shape)
    assume(np.any(mask & (labels == 2)))
    chi = rng.normal(0, 0.1, shape).astype(np.float32)
    reference = REFERENCES[method]
    base = reference(chi, mask, labels=labels, label_values=(2,))
    moved = reference(chi + np.float32(constant), mask, labels=labels, label_values=(2,))
    np.testing.assert_allclose(moved, base, atol=2e-6 * (1 + abs(constant)))
    assert np.all(moved[~mask] == 0)


@pytest.mark.parametrize("invert", [tkd, tikhonov])
def test_property_inversions_see_the_true_sign(invert):
    """Guards the properties above against maps that are all zero: a positive source comes out
    positive, at an oblique B0 and anisotropic voxels."""
    b0_dir = tuple(np.array([0.3, -0.2, 0.93]) / np.linalg.norm([0.3, -0.2, 0.93]))
    chi, mask, field = _head((24, 22, 20), (1.0, 1.3, 2.0), b0_dir, seed=3)
    estimate = invert(field, mask, voxel_size=(1.0, 1.3, 2.0), b0_dir=b0_dir)
    sources = mask & (chi != 0)
    assert np.corrcoef(estimate[mask], chi[mask])[0, 1] > 0.5
    assert np.sign(estimate[sources].mean() - estimate[mask].mean()) == np.sign(
        chi[sources].mean() - chi[mask].mean()
    )
