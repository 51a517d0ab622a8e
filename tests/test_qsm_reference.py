"""Susceptibility referencing against values computed by hand."""

import numpy as np
import pytest

from bids_qsm.qsm.reference import REFERENCES, reference_labels, reference_mean, reference_none


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    chi = rng.normal(0.05, 0.02, (12, 10, 8)).astype(np.float32)
    mask = np.zeros(chi.shape, dtype=bool)
    mask[2:10, 2:8, 1:7] = True
    labels = np.zeros(chi.shape, dtype=np.int32)
    labels[3:5, 3:5, 2:4] = 4  # left lateral ventricle
    labels[6:8, 3:5, 2:4] = 43  # right lateral ventricle
    labels[0:2, :, :] = 24  # CSF, all outside the mask
    chi[labels == 4] = 0.5
    chi[labels == 43] = -0.1
    return chi, mask, labels


def test_dispatch_table_default_first():
    assert list(REFERENCES) == ["mean", "none", "labels"]


def test_mean_makes_the_mask_mean_zero(volume):
    chi, mask, _ = volume
    out = reference_mean(chi, mask)
    assert out.dtype == np.float32
    assert abs(out[mask].mean()) < 1e-6
    assert np.all(out[~mask] == 0)
    # A pure shift: differences between voxels are kept.
    np.testing.assert_allclose(out[mask] - out[mask][0], chi[mask] - chi[mask][0], atol=1e-6)


def test_none_keeps_values_inside_and_zeroes_outside(volume):
    chi, mask, _ = volume
    out = reference_none(chi, mask)
    np.testing.assert_array_equal(out[mask], chi[mask])
    assert np.all(out[~mask] == 0)


def test_labels_zero_the_reference_region(volume):
    chi, mask, labels = volume
    out = reference_labels(chi, mask, labels=labels, label_values=(4, 43))
    # Each ventricle has 8 voxels, at 0.5 and -0.1 ppm: the reference is their mean, 0.2 ppm.
    np.testing.assert_allclose(out[mask], chi[mask] - 0.2, atol=1e-6)
    assert abs(out[np.isin(labels, (4, 43))].mean()) < 1e-6
    assert np.all(out[~mask] == 0)


def test_labels_only_count_voxels_inside_the_mask(volume):
    chi, mask, labels = volume
    labels = labels.copy()
    labels[11, 9, 7] = 4  # outside the mask: must not move the reference
    chi = chi.copy()
    chi[11, 9, 7] = 100.0
    out = reference_labels(chi, mask, labels=labels, label_values=(4, 43))
    np.testing.assert_allclose(out[mask], chi[mask] - 0.2, atol=1e-6)


def test_labels_absent_from_the_mask_raise(volume):
    chi, mask, labels = volume
    with pytest.raises(ValueError, match=r"\(24,\) have no voxel inside the mask"):
        reference_labels(chi, mask, labels=labels, label_values=(24,))
    with pytest.raises(ValueError, match="needs a label image"):
        reference_labels(chi, mask, label_values=(4,))
    with pytest.raises(ValueError, match="at least one label value"):
        reference_labels(chi, mask, labels=labels)


def test_shape_mismatch_raises(volume):
    chi, mask, labels = volume
    with pytest.raises(ValueError, match="differs"):
        reference_mean(chi, mask[:-1])
    with pytest.raises(ValueError, match="label image shape"):
        reference_labels(chi, mask, labels=labels[:-1], label_values=(4,))
