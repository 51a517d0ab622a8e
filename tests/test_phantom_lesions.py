"""The phantom's planted clinical findings and the lesion masks it writes for --lesion-dir."""

import csv

import nibabel as nb
import numpy as np

from bids_qsm.phantom import TISSUES, main
from bids_qsm.phantom_lesions import LESION_NAMES, LESION_TISSUES, RIM_MM, lesion_labels


def test_lesion_mode_plants_the_findings_and_writes_their_masks(tmp_path):
    out = tmp_path / "bids"
    code = main([str(out), "--lesions", "--shape", "64", "76", "56", "--voxel-size", "3", "3",
                 "3", "--echo-times", "0.005", "0.015", "--snr", "inf"])  # fmt: skip
    assert code == 0
    truth = out / "derivatives/phantom/sub-01/anat"
    labels = np.asarray(nb.load(truth / "sub-01_dseg.nii.gz").dataobj)
    chi = nb.load(truth / "sub-01_Chimap.nii.gz").get_fdata()
    assert {9010, 9011, 9012, 9006, 9007} <= set(np.unique(labels).tolist())
    # the rim is more paramagnetic than the core, the core than white matter
    rim, core = chi[labels == 9011].mean(), chi[labels == 9010].mean()
    white = chi[np.isin(labels, (2, 41))].mean()
    assert rim > core + 0.03 > white + 0.03
    for label, (name, value, _, _) in LESION_TISSUES.items():
        assert TISSUES[label][0] == name and TISSUES[label][1] == value
    masks = out / "derivatives/lesions"
    image = nb.load(masks / "sub-01/anat/sub-01_desc-lesion_dseg.nii.gz")
    lesions = np.asarray(image.dataobj)
    np.testing.assert_array_equal(lesions, lesion_labels(labels))
    assert set(np.unique(lesions).tolist()) == {0, 1, 2}
    np.testing.assert_allclose(image.affine, nb.load(truth / "sub-01_dseg.nii.gz").affine)
    with open(masks / "desc-lesion_dseg.tsv", newline="") as f:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(f, delimiter="\t")}
    assert names == LESION_NAMES
    # the lesion with the rim keeps its rim inside the mask (a FLAIR lesion includes it)
    assert (lesions[labels == 9011] == 1).all() and RIM_MM > 0


def test_without_the_option_the_head_has_no_lesions(tmp_path):
    from bids_qsm.phantom import simulate_head

    scan = simulate_head(shape=(48, 56, 40), voxel_size=(4.0, 4.0, 4.0), echo_times=(0.005,),
                         snr=np.inf, oversample=1)  # fmt: skip
    assert not np.isin(scan.labels, list(LESION_TISSUES)).any()
