"""Region statistics, the group level, provenance and the derivatives' validity, end to end."""

import csv
import json
import shutil

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.cli.run import main
from bids_qsm.phantom import write_dataset
from bids_qsm.validation import validate


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two 3 mm phantom subjects with their true segmentation as the segmentation dataset."""
    root = tmp_path_factory.mktemp("regions")
    bids = write_dataset(
        root / "bids", subjects=2, shape=(64, 76, 56), voxel_size=(3.0, 3.0, 3.0),
        echo_times=(0.005, 0.012, 0.019, 0.026), oversample=1, seed=5,
    )  # fmt:skip
    segmentations = bids / "derivatives" / "phantom"
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--segmentation-dir", str(segmentations),
                 "--reference", "labels", "--reference-labels", "csf"])  # fmt:skip
    return bids, out, root, code


def test_each_run_gets_a_region_table_and_labels(cohort):
    _, out, _, code = cohort
    assert code == 0
    for subject in ("sub-01", "sub-02"):
        anat = out / subject / "anat"
        rows = _rows(anat / f"{subject}_desc-roistats_Chimap.tsv")
        names = {row["name"] for row in rows}
        assert {"Left-Pallidum", "Right-Putamen", "Vein"} <= names
        assert list(rows[0]) == ["index", "name", "n_voxels", "volume_mm3", "mean", "median",
                                 "std", "p25", "p75"]  # fmt:skip
        assert (anat / f"{subject}_dseg.nii.gz").is_file()
        assert (anat / f"{subject}_dseg.tsv").is_file()
        meta = json.loads((anat / f"{subject}_Chimap.json").read_text())
        assert meta["Referencing"]["method"] == "labels"
        assert meta["Referencing"]["label_values"] == [4, 24, 43]


def test_label_reference_zeroes_the_csf_mean(cohort):
    _, out, _, _ = cohort
    anat = out / "sub-01" / "anat"
    chi = nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    labels = nb.load(anat / "sub-01_dseg.nii.gz").get_fdata().astype(int)
    mask = nb.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    csf = mask & np.isin(labels, (4, 24, 43))
    assert abs(chi[csf].mean()) < 1e-4


def test_group_table_gathers_the_per_run_tables(cohort):
    bids, out, _, _ = cohort
    assert main([str(bids), str(out), "group"]) == 0
    group = _rows(out / "group" / "desc-roistats_Chimap.tsv")
    per_run = {s: _rows(out / s / "anat" / f"{s}_desc-roistats_Chimap.tsv")
               for s in ("sub-01", "sub-02")}  # fmt:skip
    assert len(group) == sum(len(rows) for rows in per_run.values())
    for row in group:
        match = [r for r in per_run[row["participant_id"]] if r["index"] == row["index"]]
        assert len(match) == 1
        assert all(row[k] == match[0][k] for k in match[0])
        assert row["session_id"] == "n/a"
    qc = _rows(out / "group" / "desc-qc_Chimap.tsv")
    assert {row["participant_id"] for row in qc} == {"sub-01", "sub-02"}
    assert (out / "group" / "desc-roistats_Chimap.svg").stat().st_size > 1000


def test_derivatives_pass_the_bids_validator(cohort):
    _, out, _, _ = cohort
    assert validate(out) == []


def test_report_shows_every_figure(cohort):
    _, out, _, _ = cohort
    html = (out / "sub-01.html").read_text()
    figures = sorted((out / "sub-01" / "figures").glob("*.svg"))
    assert len(figures) == 7  # the run's six and the findings of the foci read-out (default)
    assert any(f.name.endswith("_desc-findings_qsm.svg") for f in figures)
    for figure in figures:
        assert f"sub-01/figures/{figure.name}" in html
    assert "V-SHARP" in html or "Background" in html
    assert "Timings" in html


def test_map_is_reproduced_from_its_sidecar_alone(cohort):
    bids, out, root, _ = cohort
    sidecar = out / "sub-01" / "anat" / "sub-01_Chimap.json"
    again = root / "again"
    code = main([str(bids), str(again), "participant", "-w", str(root / "work_again"),
                 "--skip-bids-validation", "--participant-label", "01",
                 "--segmentation-dir", str(bids / "derivatives" / "phantom"),
                 "--reproduce", str(sidecar)])  # fmt:skip
    assert code == 0
    first = nb.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    second = nb.load(again / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    np.testing.assert_allclose(second, first, atol=1e-6)
    meta = json.loads((again / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert meta["DipoleInversion"] == json.loads(sidecar.read_text())["DipoleInversion"]


def test_segmentation_of_another_subject_is_reported_and_the_maps_still_written(cohort, capsys):
    bids, _, root, _ = cohort
    wrong = root / "wrong_seg"
    shutil.copytree(bids / "derivatives" / "phantom", wrong)
    shutil.rmtree(wrong / "sub-01")
    out = root / "out_wrong"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work_wrong"),
                 "--skip-bids-validation", "--segmentation-dir", str(wrong)])  # fmt:skip
    assert code == 66
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "sub-01" in line and "error" in line]
    assert lines and "Traceback" not in err
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()
    assert not (out / "sub-01" / "anat" / "sub-01_desc-roistats_Chimap.tsv").exists()
    assert (out / "sub-02" / "anat" / "sub-02_desc-roistats_Chimap.tsv").is_file()


def test_group_without_outputs_is_a_clear_error(cohort, tmp_path, capsys):
    bids, _, _, _ = cohort
    assert main([str(bids), str(tmp_path / "nothing"), "group"]) == 66
    assert "participant level first" in capsys.readouterr().err
