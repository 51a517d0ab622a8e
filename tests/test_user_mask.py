"""A brain mask of the user's (--mask-dir) replaces the computed one; bad masks are one-line
errors that leave the other runs alone."""

import json
import shutil

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.cli.run import main
from bids_qsm.phantom import write_dataset
from bids_qsm.segmentation import SegmentationError, find_mask


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two 3 mm subjects; their true brain masks, shrunk by two voxels, as the user's masks."""
    root = tmp_path_factory.mktemp("user_mask")
    bids = write_dataset(
        root / "bids", subjects=2, shape=(64, 76, 56), voxel_size=(3.0, 3.0, 3.0),
        echo_times=(0.005, 0.012, 0.019, 0.026), oversample=1, seed=11,
    )  # fmt:skip
    masks = root / "masks"
    for subject in ("sub-01", "sub-02"):
        truth = bids / "derivatives" / "phantom" / subject / "anat"
        img = nb.load(truth / f"{subject}_desc-brain_mask.nii.gz")
        small = np.asarray(img.dataobj) > 0
        for _ in range(2):
            small[1:-1, 1:-1, 1:-1] &= (
                small[:-2, 1:-1, 1:-1] & small[2:, 1:-1, 1:-1] & small[1:-1, :-2, 1:-1]
                & small[1:-1, 2:, 1:-1] & small[1:-1, 1:-1, :-2] & small[1:-1, 1:-1, 2:]
            )  # fmt:skip
        (masks / subject / "anat").mkdir(parents=True)
        out = masks / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz"
        nb.Nifti1Image(small.astype(np.uint8), img.affine).to_filename(out)
    return bids, masks, root


def test_the_users_mask_is_the_maps_mask(dataset):
    bids, masks, root = dataset
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--participant-label", "01",
                 "--mask-dir", str(masks)])  # fmt:skip
    assert code == 0
    anat = out / "sub-01" / "anat"
    user = nb.load(masks / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    chi = nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    written = nb.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert np.all(chi[~user] == 0) and not np.any(written & ~user)
    assert written.sum() > 0.8 * user.sum()
    meta = json.loads((anat / "sub-01_Chimap.json").read_text())
    assert meta["Masking"]["method"] == "file"
    assert meta["Masking"]["file"].endswith("sub-01_desc-brain_mask.nii.gz")
    assert "given by the user" in (out / "logs" / "CITATION.md").read_text()

    # the map is reproduced from its sidecar only with the mask folder given again
    sidecar = str(anat / "sub-01_Chimap.json")
    again = [str(bids), str(root / "again"), "participant", "--skip-bids-validation",
             "-w", str(root / "work_again"), "--reproduce", sidecar]  # fmt:skip
    assert main(again) == 2
    assert main([*again, "--participant-label", "01", "--mask-dir", str(masks)]) == 0
    second = nb.load(root / "again" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    np.testing.assert_allclose(second, chi, atol=1e-6)


def test_a_mask_on_another_grid_skips_only_its_run(dataset, capsys):
    bids, masks, root = dataset
    bad = root / "bad_masks"
    shutil.copytree(masks, bad)
    path = bad / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz"
    img = nb.load(path)
    nb.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine).to_filename(path)
    out = root / "out_bad"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work_bad"),
                 "--skip-bids-validation", "--mask-dir", str(bad)])  # fmt:skip
    assert code == 66
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "not on the MEGRE grid" in line]
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in err
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()
    assert not (out / "sub-02").exists()


def test_find_mask_names_what_is_missing(dataset, tmp_path):
    _, masks, _ = dataset
    grid = nb.load(masks / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz")
    where = {"target_shape": grid.shape, "target_affine": grid.affine}
    assert find_mask(masks, subject="01", **where).name == "sub-01_desc-brain_mask.nii.gz"
    with pytest.raises(SegmentationError, match="no brain mask for sub-07 .*found sub-01"):
        find_mask(masks, subject="07", **where)
    with pytest.raises(SegmentationError, match=r"no \*_mask.nii\[.gz\] brain mask"):
        find_mask(tmp_path, subject="01", **where)
