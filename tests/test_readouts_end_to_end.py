"""The clinical read-outs from the command line, on the head phantom with planted findings:
microbleeds and calcifications, a rim lesion, a rimless lesion (masks through --lesion-dir) and
veins of known susceptibility; then bad lesion input."""

import csv
import shutil

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage as ndi

from bids_qsm.cli.run import main
from bids_qsm.phantom import TISSUES, write_dataset
from bids_qsm.qsm.veins import oxygen_saturation

DEEP_GREY = (10, 11, 12, 13, 49, 50, 51, 52, 27, 59, 9001, 9002, 9003, 9004)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("readouts")
    bids = write_dataset(root / "bids", subjects=1, lesions=True)
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--nprocs", "2", "--veins",
                 "--lesion-dir", str(bids / "derivatives" / "lesions")])  # fmt: skip
    return root, bids, out, code


def _planted(bids, label):
    """Centroids (scanner mm) of the connected pieces of a truth label."""
    image = nb.load(bids / "derivatives/phantom/sub-01/anat/sub-01_dseg.nii.gz")
    pieces, n = ndi.label(np.asarray(image.dataobj) == label)
    centres = ndi.center_of_mass(pieces > 0, pieces, range(1, n + 1))
    return [image.affine[:3, :3] @ np.array(c) + image.affine[:3, 3] for c in centres]


def test_every_planted_focus_is_found_within_4_mm_with_its_sign(lesion_run):
    _, bids, out, code = lesion_run
    assert code == 0
    rows = _rows(out / "sub-01/anat/sub-01_desc-foci_Chimap.tsv")
    found = {kind: [np.array([float(r[k]) for k in ("x_mm", "y_mm", "z_mm")])
                    for r in rows if r["class"] == kind]
             for kind in ("paramagnetic", "diamagnetic")}  # fmt: skip
    for label, kind in ((9007, "paramagnetic"), (9006, "diamagnetic")):
        planted = _planted(bids, label)
        assert len(planted) >= 2
        for centre in planted:
            assert min(np.linalg.norm(c - centre) for c in found[kind]) < 4.0, (kind, centre)
    assert len(rows) == len(_planted(bids, 9006)) + len(_planted(bids, 9007))  # nothing else
    for row in rows:
        assert (float(row["mean_ppm"]) > 0) == (row["class"] == "paramagnetic")
        assert float(row["magnitude_ratio"]) < 0.85 and float(row["r2star_per_s"]) > 40


def test_no_focus_in_the_deep_grey_matter_and_the_dseg_is_labelled(lesion_run):
    _, bids, out, _ = lesion_run
    truth = nb.load(bids / "derivatives/phantom/sub-01/anat/sub-01_dseg.nii.gz").get_fdata()
    foci = np.asarray(nb.load(out / "sub-01/anat/sub-01_desc-foci_dseg.nii.gz").dataobj)
    assert set(np.unique(foci)) <= {0, 1, 2}
    assert not (foci > 0)[np.isin(truth, DEEP_GREY)].any()
    lookup = (out / "sub-01/anat/sub-01_desc-foci_dseg.tsv").read_text()
    assert lookup == "index\tname\n1\tparamagnetic\n2\tdiamagnetic\n"


def test_the_rim_lesion_is_flagged_and_the_rimless_one_not(lesion_run):
    _, _, out, _ = lesion_run
    rows = {r["name"]: r for r in _rows(out / "sub-01/anat/sub-01_desc-lesions_Chimap.tsv")}
    assert rows["lesion-1"]["rim"] == "true" and rows["lesion-2"]["rim"] == "false"
    assert float(rows["lesion-1"]["rim_fraction"]) >= 2 / 3
    assert float(rows["lesion-2"]["rim_fraction"]) < 1 / 3


def test_venous_susceptibility_and_saturation_against_the_planted_veins(lesion_run):
    _, _, out, _ = lesion_run
    (row,) = _rows(out / "sub-01/anat/sub-01_desc-veins_Chimap.tsv")
    vein_chi = TISSUES[9005][1]  # ppm over water; the tissue around veins is near water
    assert float(row["dchi_ppm"]) == pytest.approx(vein_chi, rel=0.2)
    assert float(row["Y"]) == pytest.approx(oxygen_saturation(vein_chi), abs=0.05)
    assert row["hct"] == "0.4" and row["reference"].startswith("tissue")
    veins = np.asarray(nb.load(out / "sub-01/anat/sub-01_desc-veins_mask.nii.gz").dataobj)
    assert veins.sum() * 8 == pytest.approx(float(row["vein_volume_mm3"]))


def test_read_outs_have_figures_citations_and_described_columns(lesion_run):
    _, _, out, _ = lesion_run
    for key in ("findings", "veins"):
        assert (out / f"sub-01/figures/sub-01_desc-{key}_qsm.svg").is_file()
    assert "Foci and lesions on the Chimap beside the SWI" in (out / "sub-01.html").read_text()
    citation = (out / "logs/CITATION.md").read_text()
    for text in ("Jain V", "Spees WM", "Frangi AF", "Bagnato F", "Deistung A", "Hct = 0.4"):
        assert text in citation
    meta = (out / "sub-01/anat/sub-01_desc-foci_Chimap.json").read_text()
    assert '"moment_ppm_mm3"' in meta and '"FociSearch"' in meta


@pytest.mark.parametrize("problem", ["another subject", "empty"])
def test_bad_lesion_masks_get_one_line_and_the_other_outputs_are_written(
    lesion_run, problem, capsys
):
    root, bids, _, _ = lesion_run
    lesions = root / f"lesions-{problem.replace(' ', '-')}"
    source = bids / "derivatives/lesions/sub-01/anat/sub-01_desc-lesion_dseg.nii.gz"
    image = nb.load(source)
    if problem == "empty":
        bad = lesions / "sub-01/anat/sub-01_desc-lesion_mask.nii.gz"
        data = np.zeros(image.shape, np.uint8)
    else:
        bad = lesions / "sub-02/anat/sub-02_desc-lesion_mask.nii.gz"
        data = (np.asarray(image.dataobj) > 0).astype(np.uint8)
    bad.parent.mkdir(parents=True)
    nb.Nifti1Image(data, image.affine).to_filename(bad)
    out = root / f"out-{problem.replace(' ', '-')}"
    capsys.readouterr()
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--nprocs", "2",
                 "--lesion-dir", str(lesions)])  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 66
    assert len(errors) == 1, errors
    named = bad if problem == "empty" else lesions
    assert str(named) in errors[0] and "no lesion table for sub-01" in errors[0]
    anat = out / "sub-01/anat"
    assert (anat / "sub-01_Chimap.nii.gz").is_file()
    assert (anat / "sub-01_desc-foci_Chimap.tsv").is_file()
    assert not (anat / "sub-01_desc-lesions_Chimap.tsv").exists()
    shutil.rmtree(out)
