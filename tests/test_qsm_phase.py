"""Phase ingest: vendor scalings against their published formulas, signs, missing voxels."""

import logging

import numpy as np
import pytest

from bids_qsm.qsm.phase import (
    PHASE_UNITS,
    apply_phase_sign,
    complex_to_polar,
    finite_mask,
    scale_phase,
)

STEP = 2 * np.pi / 4096  # rad per Siemens code


def _circular_error(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - np.asarray(b, float)))))


@pytest.fixture
def true_phase():
    rng = np.random.default_rng(1)
    return rng.uniform(-np.pi, np.pi, size=(16, 16, 8))


def test_units_are_the_contract_keys():
    assert PHASE_UNITS == ("auto", "rad", "arbitrary")


@pytest.mark.parametrize("units", ["auto", "arbitrary"])
def test_siemens_unsigned_range(true_phase, units):
    # Siemens 0..4095: v = (phi + pi) / (2 pi) * 4095 (the BIDS/dcm2niix convention).
    codes = np.round((true_phase + np.pi) / (2 * np.pi) * 4095).astype(np.int16)
    codes.flat[:2] = (0, 4095)
    out = scale_phase(codes, units=units)
    assert out.dtype == np.float32
    assert out.min() >= -np.pi and out.max() < np.pi
    assert _circular_error(out, true_phase).ravel()[2:].max() < STEP


@pytest.mark.parametrize("units", ["auto", "arbitrary"])
def test_siemens_signed_range(true_phase, units):
    # Siemens -4096..4095: v = phi / pi * 4096.
    codes = np.clip(np.round(true_phase / np.pi * 4096), -4096, 4095).astype(np.int16)
    codes.flat[:2] = (-4096, 4095)
    out = scale_phase(codes, units=units)
    assert _circular_error(out, true_phase).ravel()[2:].max() < STEP


def test_radians_pass_through_and_wrap(true_phase):
    out = scale_phase(true_phase, units="rad")
    assert np.allclose(out, true_phase, atol=1e-6)
    shifted = scale_phase(true_phase + 4 * np.pi, units="rad")
    assert _circular_error(shifted, true_phase).max() < 1e-5
    assert shifted.min() >= -np.pi and shifted.max() < np.pi
    assert np.allclose(scale_phase(true_phase, units="auto"), true_phase, atol=1e-6)


def test_arbitrary_range_rescaled_with_warning(true_phase, caplog):
    true_phase.flat[:2] = (-np.pi, np.pi)  # the stored extremes are the ends of the turn
    stored = (true_phase + np.pi) / (2 * np.pi) * 0.007 - 0.0035  # ROMEO test-data style
    with caplog.at_level(logging.WARNING, logger="bids_qsm.qsm.phase"):
        out = scale_phase(stored, units="arbitrary")
    assert "rescaled" in caplog.text
    assert _circular_error(out, true_phase).max() < 1e-5


def test_nonfinite_voxels_become_zero_not_noise(true_phase):
    phase = true_phase.copy()
    phase[0, 0, 0], phase[1, 1, 1], phase[2, 2, 2] = np.nan, np.inf, -np.inf
    out = scale_phase(phase, units="rad")
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 0 and out[2, 2, 2] == 0
    assert np.isfinite(out).all()
    finite = finite_mask(phase, np.ones_like(phase))
    assert (~finite).sum() == 3 and not finite[0, 0, 0]
    # Missing voxels do not shift the scaling of the rest (here: Siemens codes with a NaN).
    codes = np.round((true_phase + np.pi) / (2 * np.pi) * 4095)
    codes.flat[:2] = (0, 4095)
    codes[3, 3, 3] = np.nan
    out = scale_phase(codes, units="auto")
    good = np.isfinite(codes)
    good.flat[:2] = False
    assert _circular_error(out[good], true_phase[good]).max() < STEP


def test_unknown_units_rejected():
    with pytest.raises(ValueError, match="units"):
        scale_phase(np.zeros(3), units="degrees")


def test_complex_to_polar():
    magnitude = np.array([1.0, 2.0, 0.5, 3.0])
    phase = np.array([0.3, -2.0, 3.0, -np.pi / 2])
    mag, ph = complex_to_polar(magnitude * np.cos(phase), magnitude * np.sin(phase))
    assert np.allclose(mag, magnitude, atol=1e-6)
    assert np.allclose(ph, phase, atol=1e-6)
    mag, ph = complex_to_polar(np.array([np.nan, 1.0]), np.array([0.0, 0.0]))
    assert mag.tolist() == [0.0, 1.0] and ph.tolist() == [0.0, 0.0]


def test_phase_sign(true_phase):
    flipped = apply_phase_sign(true_phase, -1)
    assert _circular_error(flipped, -true_phase).max() < 1e-5
    assert flipped.min() >= -np.pi and flipped.max() < np.pi
    assert np.allclose(apply_phase_sign(true_phase, 1), true_phase, atol=1e-6)
    with pytest.raises(ValueError):
        apply_phase_sign(true_phase, 2)


def test_siemens_phantom_scaling(shared_data):
    nib = pytest.importorskip("nibabel")
    anat = shared_data / "siemens_phantom_6echo" / "sub-phantom" / "anat"
    stored = np.asarray(nib.load(anat / "sub-phantom_echo-2_part-phase_MEGRE.nii.gz").dataobj)
    out = scale_phase(stored, units="arbitrary")
    # The README's formula: radians = v / 4095 * 2 pi - pi.
    assert _circular_error(out, stored / 4095 * 2 * np.pi - np.pi).max() < 1e-5
    assert np.array_equal(out, scale_phase(stored, units="auto"))
