"""Finding a subject's segmentation in a derivatives dataset, and its bad-input messages."""

import json

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.qsm.roi import FREESURFER_ASEG, roi_statistics
from bids_qsm.segmentation import (
    SegmentationError,
    check_coverage,
    find_segmentation,
    labels_on_grid,
    read_itk_transform,
    read_lookup,
    read_roi_table,
    write_itk_transform,
    write_lookup,
    write_roi_table,
)

MEGRE_SHAPE = (10, 12, 8)
MEGRE_AFFINE = np.array([[2.0, 0, 0, -10], [0, 2, 0, -12], [0, 0, 2, -8], [0, 0, 0, 1]])
ANAT_AFFINE = np.array([[1.0, 0, 0, -11], [0, 1, 0, -13], [0, 0, 1.2, -9], [0, 0, 0, 1]])


def labels_image():
    labels = np.zeros(MEGRE_SHAPE, np.int16)
    labels[2:8, 2:10, 2:6] = 2
    labels[4:6, 4:8, 3:5] = 13
    return labels


def save(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.Nifti1Image(data, affine).to_filename(path)
    return path


def find(root, subject="01", session=None, **kwargs):
    return find_segmentation(root, subject=subject, session=session, target_shape=MEGRE_SHAPE,
                             target_affine=MEGRE_AFFINE, **kwargs)  # fmt: skip


@pytest.fixture
def seg_dir(tmp_path):
    root = tmp_path / "fastsurfer"
    root.mkdir()
    write_lookup(root / "dseg.tsv", {2: "WM", 13: "Left-Pallidum"})
    return root


def test_segmentation_on_the_megre_grid(seg_dir):
    dseg = save(seg_dir / "sub-01/anat/sub-01_desc-aseg_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    seg = find(seg_dir, subject="sub-01")
    assert seg.dseg == dseg and not seg.needs_registration
    assert seg.names == {2: "WM", 13: "Left-Pallidum"} and seg.lookup.endswith("dseg.tsv")
    labels, transform = labels_on_grid(
        seg, magnitude=np.ones(MEGRE_SHAPE), target_affine=MEGRE_AFFINE
    )
    assert transform is None
    np.testing.assert_array_equal(labels, labels_image())


def test_per_file_lookup_wins_and_session_less_serves_every_session(seg_dir):
    dseg = save(seg_dir / "sub-01/anat/sub-01_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    write_lookup(dseg.with_name("sub-01_dseg.tsv"), {13: "GP"})
    seg = find(seg_dir, session="2")
    assert seg.names == {13: "GP"}
    own = save(seg_dir / "sub-01/ses-2/anat/sub-01_ses-2_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    assert find(seg_dir, session="ses-2").dseg == own


def test_needs_registration_finds_the_t1w(seg_dir):
    anat = seg_dir / "sub-01/anat"
    save(anat / "sub-01_desc-aseg_dseg.nii.gz", np.zeros((22, 26, 14), np.int16), ANAT_AFFINE)
    t1w = save(
        anat / "sub-01_desc-preproc_T1w.nii.gz", np.ones((22, 26, 14), np.float32), ANAT_AFFINE
    )
    save(anat / "sub-01_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz",
         np.ones((4, 4, 4), np.float32), np.eye(4))  # fmt: skip
    seg = find(seg_dir)
    assert seg.needs_registration and seg.reference == t1w


def test_grid_mismatch_without_t1w_is_a_clear_error(seg_dir):
    dseg = save(seg_dir / "sub-01/anat/sub-01_dseg.nii.gz", np.zeros((22, 26, 14), np.int16),
                ANAT_AFFINE)  # fmt: skip
    with pytest.raises(SegmentationError, match="grid mismatch and no reference T1w") as err:
        find(seg_dir)
    assert str(err.value).startswith(str(dseg)) and "\n" not in str(err.value)


def test_wrong_subject_is_a_clear_error(seg_dir):
    save(seg_dir / "sub-02/anat/sub-02_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    with pytest.raises(SegmentationError, match="no segmentation for sub-01.*sub-02"):
        find(seg_dir)
    misplaced = save(seg_dir / "sub-01/anat/sub-02_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    with pytest.raises(SegmentationError, match="named sub-02 but lies in sub-01") as err:
        find(seg_dir)
    assert err.value.path == misplaced


def test_sidecar_from_another_subject_is_rejected(seg_dir):
    dseg = save(seg_dir / "sub-01/anat/sub-01_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    dseg.with_name("sub-01_dseg.json").write_text(
        json.dumps({"Sources": ["bids:raw:sub-07/anat/sub-07_T1w.nii.gz"]})
    )
    with pytest.raises(SegmentationError, match="made from sub-07, not sub-01"):
        find(seg_dir)


def test_labels_without_lookup(tmp_path):
    root = tmp_path / "seg"
    save(root / "sub-01/anat/sub-01_dseg.nii.gz", labels_image(), MEGRE_AFFINE)
    with pytest.raises(SegmentationError, match="without a look-up table"):
        find(root)
    assert find(root, lookup="freesurfer").names == FREESURFER_ASEG
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "GeneratedBy": [{"Name": "FastSurfer", "Version": "2.2"}]})
    )
    assert find(root).lookup == "FreeSurfer aseg (built in)"


def test_bad_lookup_and_non_integer_labels(seg_dir, tmp_path):
    (seg_dir / "dseg.tsv").write_text("index\tlabel\n2\tWM\n")
    save(seg_dir / "sub-01/anat/sub-01_dseg.nii.gz", labels_image() + 0.5, MEGRE_AFFINE)
    with pytest.raises(SegmentationError, match="'index' and 'name'"):
        find(seg_dir)
    write_lookup(seg_dir / "dseg.tsv", {2: "WM"})
    with pytest.raises(SegmentationError, match="non-integer"):
        labels_on_grid(find(seg_dir), magnitude=np.ones(MEGRE_SHAPE), target_affine=MEGRE_AFFINE)
    assert read_lookup(seg_dir / "dseg.tsv") == {2: "WM"}


def test_coverage_check_flags_a_foreign_segmentation():
    mask = np.zeros(MEGRE_SHAPE, bool)
    mask[2:8, 2:10, 2:6] = True
    assert check_coverage(labels_image(), mask, "x_dseg.nii.gz") == 1.0
    with pytest.raises(SegmentationError, match="cover only 0%"):
        check_coverage(np.roll(labels_image(), 6, axis=0) * 0, mask, "x_dseg.nii.gz")


def test_itk_transform_round_trip_and_lps_convention(tmp_path):
    matrix = np.eye(4)
    matrix[:3, 3] = (3.0, -2.0, 5.0)  # RAS+ shift
    path = write_itk_transform(tmp_path / "sub-01_from-T1w_to-MEGRE_mode-image_xfm.txt", matrix)
    text = path.read_text()
    assert "AffineTransform_double_3_3" in text
    assert "Parameters: 1 0 0 0 1 0 0 0 1 -3 2 5" in text  # LPS+: x and y flip
    c, s = np.cos(0.2), np.sin(0.2)
    matrix[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    np.testing.assert_allclose(read_itk_transform(write_itk_transform(path, matrix)), matrix,
                               atol=1e-9)  # fmt: skip


def test_roi_table_round_trip(tmp_path):
    chi = np.where(labels_image() == 13, 0.15, -0.03).astype(np.float32)
    rows = roi_statistics(chi, labels_image() > 0, labels_image(), voxel_size=(2, 2, 2),
                          names={2: "WM", 13: "Left-Pallidum"})  # fmt: skip
    path = write_roi_table(tmp_path / "sub-01_desc-roistats_Chimap.tsv", rows,
                           sidecar={"ErodeVoxels": 0})  # fmt: skip
    back = read_roi_table(path)
    assert list(back[0]) == ["index", "name", "n_voxels", "volume_mm3", "mean", "median", "std",
                             "p25", "p75"]  # fmt: skip
    assert [r["name"] for r in back] == ["WM", "Left-Pallidum"]
    assert float(back[1]["mean"]) == pytest.approx(0.15, abs=1e-6)
    assert float(back[1]["volume_mm3"]) == 16 * 8
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["ErodeVoxels"] == 0 and meta["mean"]["Units"] == "ppm"


def test_labels_follow_the_registration_onto_the_megre_grid(seg_dir, monkeypatch):
    """Plumbing: the T1w and the affines go to `register`; its transform moves the labels."""
    shift = np.eye(4)
    shift[:3, 3] = (2.0, 0.0, 0.0)  # the T1w world is 2 mm to the right of the MEGRE world
    labels_anat = np.zeros((22, 26, 14), np.int16)
    # Label 13 over MEGRE voxels x 4..5 (world -2..0 mm) + 2 mm shift = anatomical world 0..2 mm.
    world_x = ANAT_AFFINE[0, 0] * np.arange(22) + ANAT_AFFINE[0, 3]
    labels_anat[(world_x > -1.0) & (world_x < 3.0)] = 13
    anat = seg_dir / "sub-01/anat"
    save(anat / "sub-01_dseg.nii.gz", labels_anat, ANAT_AFFINE)
    save(anat / "sub-01_T1w.nii.gz", np.ones(labels_anat.shape, np.float32), ANAT_AFFINE)
    calls = {}

    def fake_register(fixed, moving, *, fixed_affine, moving_affine, kind, num_threads):
        calls.update(shape=moving.shape, fixed=fixed.shape, kind=kind,
                     affines=(fixed_affine, moving_affine))  # fmt: skip
        return shift

    monkeypatch.setattr("bids_qsm.qsm.registration.register", fake_register)
    magnitude = np.ones((*MEGRE_SHAPE, 3), np.float32)
    labels, transform = labels_on_grid(find(seg_dir), magnitude=magnitude,
                                       target_affine=MEGRE_AFFINE, kind="affine")  # fmt: skip
    assert calls["shape"] == labels_anat.shape and calls["fixed"] == MEGRE_SHAPE
    assert calls["kind"] == "affine"
    np.testing.assert_allclose(calls["affines"][1], ANAT_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(transform, shift)
    assert labels.shape == MEGRE_SHAPE
    assert np.all(labels[4:6] == 13) and not np.any(labels[:4]) and not np.any(labels[6:])
