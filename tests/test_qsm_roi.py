"""Region statistics against hand-computed values, erosion, FreeSurfer names, label specs."""

import numpy as np
import pytest

from bids_qsm.qsm.roi import (
    FREESURFER_ASEG,
    ROI_COLUMNS,
    erode_labels,
    resolve_labels,
    roi_statistics,
)


def two_blocks():
    """A 5x5x5 block of label 13 (chi = 0.15 + 0.01 * x) and a 1x1x2 sliver of label 4."""
    labels = np.zeros((12, 12, 12), np.int16)
    labels[2:7, 2:7, 2:7] = 13
    labels[9, 9, 9:11] = 4
    chi = np.zeros(labels.shape, np.float32)
    x = np.arange(12, dtype=np.float32)[:, None, None]
    chi[labels == 13] = np.broadcast_to(0.15 + 0.01 * x, labels.shape)[labels == 13]
    chi[labels == 4] = [-0.02, 0.04]
    return chi, labels


def test_statistics_match_hand_computed_values():
    chi, labels = two_blocks()
    mask = np.ones(labels.shape, bool)
    rows = roi_statistics(chi, mask, labels, voxel_size=(2.0, 2.0, 1.5), names=FREESURFER_ASEG)
    assert [r["index"] for r in rows] == [4, 13]
    vent, pall = rows
    assert set(ROI_COLUMNS) <= set(pall)
    assert pall["name"] == "Left-Pallidum" and vent["name"] == "Left-Lateral-Ventricle"
    assert pall["n_voxels"] == 125 and pall["volume_mm3"] == pytest.approx(125 * 6.0)
    # x runs 2..6 with 25 voxels each: chi 0.17 .. 0.21, mean 0.19, population std 0.01 * sqrt(2)
    assert pall["mean"] == pytest.approx(0.19, abs=1e-6)
    assert pall["median"] == pytest.approx(0.19, abs=1e-6)
    assert pall["std"] == pytest.approx(0.01 * np.sqrt(2), abs=1e-6)
    assert pall["p25"] == pytest.approx(0.18, abs=1e-6)
    assert pall["p75"] == pytest.approx(0.20, abs=1e-6)
    assert vent["mean"] == pytest.approx(0.01, abs=1e-7) and vent["n_voxels"] == 2


def test_mask_restricts_and_absent_labels_are_left_out():
    chi, labels = two_blocks()
    mask = np.zeros(labels.shape, bool)
    mask[:5] = True  # x = 2..4 of the block; the sliver is outside
    rows = roi_statistics(chi, mask, labels, voxel_size=(1, 1, 1), names={13: "GP"})
    assert [(r["index"], r["name"], r["n_voxels"]) for r in rows] == [(13, "GP", 75)]
    assert rows[0]["mean"] == pytest.approx(0.18, abs=1e-6)
    unnamed = roi_statistics(chi, np.ones_like(mask), labels, voxel_size=(1, 1, 1), names={})
    assert {r["name"] for r in unnamed} == {"n/a"}


def test_erosion_keeps_the_core_and_falls_back_for_small_labels():
    chi, labels = two_blocks()
    eroded = erode_labels(labels, 1)
    assert eroded.dtype == labels.dtype
    assert np.sum(eroded == 13) == 27 and np.all(eroded[3:6, 3:6, 3:6] == 13)
    assert np.sum(eroded == 4) == 0
    assert np.sum(erode_labels(labels, 2) == 13) == 1
    rows = roi_statistics(chi, np.ones(labels.shape, bool), labels, voxel_size=(1, 1, 1),
                          erode_voxels=1)  # fmt: skip
    vent, pall = rows
    assert pall["eroded"] and pall["n_voxels"] == 27 and pall["mean"] == pytest.approx(0.19)
    assert pall["std"] == pytest.approx(0.01 * np.sqrt(2 / 3), abs=1e-6)  # x = 3, 4, 5
    assert not vent["eroded"] and vent["n_voxels"] == 2  # too thin: kept un-eroded


def test_erosion_treats_neighbouring_labels_as_boundaries():
    labels = np.zeros((9, 5, 5), np.int32)
    labels[1:4, 1:4, 1:4] = 12
    labels[4:8, 1:4, 1:4] = 13  # touches label 12 along x
    eroded = erode_labels(labels, 1)
    assert set(np.unique(eroded)) == {0, 12, 13}
    assert np.argwhere(eroded == 12).tolist() == [[2, 2, 2]]
    assert np.argwhere(eroded == 13).tolist() == [[5, 2, 2], [6, 2, 2]]


def test_freesurfer_names_of_the_deep_grey_matter():
    expected = {2: "Left-Cerebral-White-Matter", 41: "Right-Cerebral-White-Matter",
                3: "Left-Cerebral-Cortex", 42: "Right-Cerebral-Cortex",
                4: "Left-Lateral-Ventricle", 43: "Right-Lateral-Ventricle",
                10: "Left-Thalamus", 49: "Right-Thalamus", 11: "Left-Caudate", 50: "Right-Caudate",
                12: "Left-Putamen", 51: "Right-Putamen", 13: "Left-Pallidum", 52: "Right-Pallidum",
                16: "Brain-Stem", 17: "Left-Hippocampus", 53: "Right-Hippocampus",
                18: "Left-Amygdala", 54: "Right-Amygdala", 24: "CSF",
                26: "Left-Accumbens-area", 58: "Right-Accumbens-area",
                28: "Left-VentralDC", 60: "Right-VentralDC",
                7: "Left-Cerebellum-White-Matter", 46: "Right-Cerebellum-White-Matter",
                8: "Left-Cerebellum-Cortex", 47: "Right-Cerebellum-Cortex"}  # fmt: skip
    for index, name in expected.items():
        assert FREESURFER_ASEG[index] == name


def test_resolve_labels_from_sets_names_and_indices():
    assert resolve_labels("ventricles", FREESURFER_ASEG) == (4, 43)
    assert resolve_labels("left-lateral-ventricle, 43", FREESURFER_ASEG) == (4, 43)
    assert resolve_labels([24], {}) == (24,)
    with pytest.raises(ValueError, match="Putamen-X"):
        resolve_labels("Putamen-X", FREESURFER_ASEG)


def test_shape_and_dtype_errors():
    chi, labels = two_blocks()
    with pytest.raises(ValueError, match="shape"):
        roi_statistics(chi[:-1], labels[:-1] > 0, labels, voxel_size=(1, 1, 1))
    with pytest.raises(ValueError, match="integers"):
        roi_statistics(chi, labels > 0, labels.astype(float), voxel_size=(1, 1, 1))
