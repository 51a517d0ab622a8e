"""Finding a subject's lesion masks in --lesion-dir, and the one-line bad-input messages."""

import json

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.lesion_masks import find_lesions
from bids_qsm.qsm.lesions import label_lesions
from bids_qsm.segmentation import SegmentationError

SHAPE = (10, 12, 8)
AFFINE = np.array([[2.0, 0, 0, -10], [0, 2, 0, -12], [0, 0, 2, -8], [0, 0, 0, 1]])


def save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(np.asarray(data), affine).to_filename(path)
    return path


def two_lesions(dtype=np.uint8):
    mask = np.zeros(SHAPE, dtype)
    mask[2:4, 2:4, 2:4] = 1
    mask[6:8, 7:10, 4:6] = 1
    return mask


def find(root, subject="01", session=None):
    return find_lesions(root, subject=subject, session=session, target_shape=SHAPE,
                        target_affine=AFFINE)  # fmt: skip


def test_a_binary_mask_on_the_grid_becomes_its_connected_pieces(tmp_path):
    path = save(tmp_path / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz", two_lesions())
    found = find(tmp_path, "sub-01")
    assert found.path == path and found.names == {} and not found.needs_registration
    labels, names = label_lesions(two_lesions(), found.names)
    assert names == {1: "lesion-1", 2: "lesion-2"}
    assert labels[2, 2, 2] != labels[6, 7, 4] and (labels > 0).sum() == two_lesions().sum()


def test_a_labelled_dseg_wins_and_keeps_its_names(tmp_path):
    save(tmp_path / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz", two_lesions())
    labels = two_lesions(np.int16) * 0
    labels[2:4, 2:4, 2:4], labels[6:8, 7:10, 4:6] = 3, 7
    path = save(tmp_path / "sub-01/anat/sub-01_desc-lesion_dseg.nii.gz", labels)
    table = "index\tname\n3\tperiventricular\n7\tjuxtacortical\n"
    (tmp_path / "desc-lesion_dseg.tsv").write_text(table)
    found = find(tmp_path)
    assert found.path == path and found.names == {3: "periventricular", 7: "juxtacortical"}
    assert label_lesions(labels, found.names)[1] == found.names


def test_another_subjects_masks_are_refused_naming_the_folder(tmp_path):
    save(tmp_path / "sub-02/anat/sub-02_desc-lesion_mask.nii.gz", two_lesions())
    with pytest.raises(SegmentationError, match="sub-01.*found sub-02") as err:
        find(tmp_path, "01")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_a_sidecar_naming_another_subject_is_refused(tmp_path):
    path = save(tmp_path / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz", two_lesions())
    path.with_name("sub-01_desc-lesion_mask.json").write_text(
        json.dumps({"Sources": ["bids:raw:sub-07/anat/sub-07_FLAIR.nii.gz"]})
    )
    with pytest.raises(SegmentationError, match="sub-07") as err:
        find(tmp_path)
    assert err.value.path == path


def test_an_empty_mask_is_refused_naming_the_file(tmp_path):
    path = save(tmp_path / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(SegmentationError, match="empty") as err:
        find(tmp_path)
    assert err.value.path == path


def test_another_grid_needs_a_t1w_to_register(tmp_path):
    other = AFFINE.copy()
    other[:3, :3] *= 0.5
    path = save(tmp_path / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz", two_lesions(), other)
    with pytest.raises(SegmentationError, match="no reference T1w") as err:
        find(tmp_path)
    assert err.value.path == path
    t1w = save(tmp_path / "sub-01/anat/sub-01_T1w.nii.gz", np.ones(SHAPE, np.float32), other)
    found = find(tmp_path)
    assert found.needs_registration and found.reference == t1w


def test_no_lesion_files_at_all(tmp_path):
    with pytest.raises(SegmentationError, match="desc-lesion"):
        find(tmp_path)
