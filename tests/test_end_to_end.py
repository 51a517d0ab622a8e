"""`bids_qsm` from the command line on phantoms with known susceptibility, and on a real scan."""

import csv
import json
import shutil

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.cli.run import main
from bids_qsm.phantom import write_dataset
from bids_qsm.validation import validate


def _truth(bids, prefix):
    folder = bids / "derivatives" / "phantom" / prefix.split("_")[0]
    if "_ses-" in prefix:
        folder = folder / prefix.split("_")[1]
    base = folder / "anat" / prefix
    names = {}
    with open(bids / "derivatives" / "phantom" / "dseg.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            names[row["name"]] = int(row["index"])
    return (
        nb.load(f"{base}_Chimap.nii.gz").get_fdata(),
        nb.load(f"{base}_dseg.nii.gz").get_fdata().astype(int),
        nb.load(f"{base}_desc-brain_mask.nii.gz").get_fdata() > 0,
        names,
    )


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """The default 2 mm phantom through the default pipeline (with BIDS validation)."""
    root = tmp_path_factory.mktemp("e2e")
    bids = write_dataset(root / "bids", subjects=1)
    out = root / "out"
    before = _snapshot(bids)
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2"])
    assert _snapshot(bids) == before, "the input dataset was written to"
    return bids, out, code


def _snapshot(folder):
    return {(str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_default_run_succeeds_and_writes_bids_derivatives(phantom_run):
    bids, out, code = phantom_run
    assert code == 0
    anat = out / "sub-01" / "anat"
    for name in ("Chimap", "desc-brain_mask", "R2starmap", "T2starmap"):
        assert (anat / f"sub-01_{name}.nii.gz").is_file()
        assert (anat / f"sub-01_{name}.json").is_file()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_qsm"


def test_chimap_grid_units_and_sidecar(phantom_run):
    bids, out, _ = phantom_run
    source = nb.load(bids / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    chimap = nb.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
    mask = nb.load(out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert chimap.shape == source.shape
    np.testing.assert_allclose(chimap.affine, source.affine, atol=1e-4)
    chi = chimap.get_fdata()
    assert np.all(chi[~mask] == 0)
    assert abs(chi[mask].mean()) < 1e-3  # referenced to the mean of the mask
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    assert meta["Units"] == "ppm"
    assert meta["MagneticFieldStrength"] == 3.0
    assert meta["EchoTime"] == sorted(meta["EchoTime"]) and len(meta["EchoTime"]) == 5
    assert all(s.startswith("bids:raw:sub-01/anat/") for s in meta["Sources"])
    assert len(meta["Sources"]) == 10
    assert meta["PhaseScaling"] == {"units": "rad", "sign": 1}
    for stage in ("Masking", "Unwrapping", "EchoCombination",
                  "BackgroundRemoval", "DipoleInversion", "Referencing"):  # fmt:skip
        assert "method" in meta[stage]
    assert meta["EstimationAlgorithm"] and meta["ReferenceRegion"]
    inversion = meta["DipoleInversion"]  # 2 mm voxels: no more iterations than at 1 mm
    assert 0 < inversion["iterations_run"] <= inversion["iterations"]
    # After LBV, TFI's first pass gives back the brain's own field at LBV's boundary.
    assert 0 < inversion["boundary_pass_iterations"] <= inversion["boundary_iterations"]
    r2 = json.loads((out / "sub-01" / "anat" / "sub-01_R2starmap.json").read_text())
    assert r2["Units"] == "1/s"


def test_chimap_matches_the_phantom_truth(phantom_run):
    bids, out, _ = phantom_run
    true_chi, labels, brain, names = _truth(bids, "sub-01")
    chi = nb.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    assert np.mean(chi[brain] != 0) >= 0.90, "the map does not cover the brain"
    inside = brain & (chi != 0)
    r = np.corrcoef(chi[inside], true_chi[inside])[0, 1]
    assert r >= 0.6, f"correlation with the true chi is {r:.2f}"
    reference = true_chi[inside].mean()

    def mean_of(name):
        sel = inside & (labels == names[name])
        assert sel.sum() > 0, name
        return chi[sel].mean(), true_chi[sel].mean() - reference

    vein, _ = mean_of("Vein")
    bleed, _ = mean_of("Microbleed")
    calcification, _ = mean_of("Calcification")
    assert vein > 0.05 and bleed > 0.1 and calcification < -0.1
    pallidum, true_pallidum = mean_of("Left-Pallidum")
    assert pallidum > 0.05 and abs(pallidum - true_pallidum) < 0.05


def test_rerun_with_the_same_work_dir_resumes(phantom_run, tmp_path):
    bids, out, _ = phantom_run
    work = out.parent / "work"
    before = (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").stat().st_mtime
    assert (
        main([str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation"]) == 0
    )
    run = work / "bids_qsm_wf" / "sub_01_wf" / "qsm_sub_01_wf"
    chi = run / "inversion_wf" / "invert" / "chi.nii"
    assert chi.stat().st_mtime < before  # the inversion was not recomputed


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """Two subjects, two sessions, tilted heads, Siemens integer phase, 3 mm, 4 echoes.

    Oversampled: computed on the acquired grid itself, the field of sharp air and bone edges
    is not harmonic inside the brain for an oblique B0, and no background removal can work."""
    root = tmp_path_factory.mktemp("cohort")
    bids = write_dataset(
        root / "bids", subjects=2, sessions=2, shape=(64, 76, 56), voxel_size=(3.0, 3.0, 3.0),
        echo_times=(0.005, 0.012, 0.019, 0.026), tilt_deg=15.0, phase_units="siemens",
        oversample=2, seed=3,
    )  # fmt:skip
    return bids, root


def test_tilted_siemens_sessions_selection(small_cohort):
    bids, root = small_cohort
    out = root / "out"
    code = main([
        str(bids), str(out), "participant", "-w", str(root / "work"),
        "--participant-label", "sub-02", "--session-label", "02", "--skip-bids-validation",
    ])  # fmt:skip
    assert code == 0
    written = sorted(p.name for p in out.rglob("*_Chimap.nii.gz"))
    assert written == ["sub-02_ses-02_Chimap.nii.gz"]
    chimap = out / "sub-02" / "ses-02" / "anat" / "sub-02_ses-02_Chimap.nii.gz"
    meta = json.loads(chimap.with_name("sub-02_ses-02_Chimap.json").read_text())
    assert meta["PhaseScaling"]["units"] == "arbitrary"
    assert abs(meta["B0Direction"][2]) < 0.99  # the oblique head's B0 is not the z axis
    true_chi, _, brain, _ = _truth(bids, "sub-02_ses-02")
    chi = nb.load(chimap).get_fdata()
    inside = brain & (chi != 0)
    assert np.corrcoef(chi[inside], true_chi[inside])[0, 1] > 0.5


def test_input_problems_are_one_line_and_other_subjects_still_run(small_cohort, capsys):
    bids, root = small_cohort
    broken = root / "broken"
    shutil.copytree(bids, broken)
    (
        broken / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_echo-3_part-phase_MEGRE.nii.gz"
    ).unlink()
    out = root / "out_broken"
    code = main([str(broken), str(out), "participant", "-w", str(root / "work_broken"),
                 "--session-label", "01", "--skip-bids-validation"])  # fmt:skip
    assert code == 66
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert any("sub-01_ses-01_echo-3" in line and "phase" in line for line in err)
    assert "Traceback" not in "\n".join(err)
    assert (out / "sub-02" / "ses-01" / "anat" / "sub-02_ses-01_Chimap.nii.gz").is_file()
    assert not (out / "sub-01").exists()


def test_unknown_participant_exits_18(small_cohort, capsys):
    bids, root = small_cohort
    code = main([str(bids), str(root / "o18"), "participant", "--participant-label", "09",
                 "--skip-bids-validation", "-w", str(root / "w18")])  # fmt:skip
    assert code == 18
    assert "09" in capsys.readouterr().err


def test_invalid_bids_exits_16(small_cohort, capsys):
    bids, root = small_cohort
    invalid = root / "invalid"
    shutil.copytree(bids, invalid)
    (invalid / "dataset_description.json").unlink()
    code = main([str(invalid), str(root / "o16"), "participant", "-w", str(root / "w16")])
    assert code == 16
    assert "BIDS validation" in capsys.readouterr().err


def test_real_siemens_phantom_runs_to_a_finite_map(shared_data, tmp_path):
    bids = shared_data / "siemens_phantom_6echo"
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])  # fmt:skip
    assert code == 0
    anat = out / "sub-phantom" / "anat"
    chi = nb.load(anat / "sub-phantom_Chimap.nii.gz").get_fdata()
    mask = nb.load(anat / "sub-phantom_desc-brain_mask.nii.gz").get_fdata() > 0
    assert mask.sum() > 1000
    assert np.all(np.isfinite(chi)) and np.any(chi[mask] != 0)
    meta = json.loads((anat / "sub-phantom_Chimap.json").read_text())
    assert meta["PhaseScaling"]["units"] == "arbitrary"
    assert len(meta["EchoTime"]) == 6
    assert validate(out) == []


def test_single_echo_run_gets_a_map_without_r2star(tmp_path):
    bids = write_dataset(
        tmp_path / "bids", shape=(64, 76, 56), voxel_size=(3.0, 3.0, 3.0), echo_times=(0.02,),
        seed=8,
    )  # fmt:skip
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])  # fmt:skip
    assert code == 0
    anat = out / "sub-01" / "anat"
    true_chi, _, brain, _ = _truth(bids, "sub-01")
    chi = nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    inside = brain & (chi != 0)
    assert np.corrcoef(chi[inside], true_chi[inside])[0, 1] > 0.5
    assert not list(anat.glob("*_R2starmap.*")) and not list(anat.glob("*_T2starmap.*"))
    meta = json.loads((anat / "sub-01_Chimap.json").read_text())
    assert meta["EchoTime"] == [0.02] and "Relaxometry" not in meta
    assert "R2*" not in (out / "logs" / "CITATION.md").read_text()
    assert (out / "sub-01.html").is_file()
    again, sidecar = tmp_path / "again", anat / "sub-01_Chimap.json"
    code = main([str(bids), str(again), "participant", "-w", str(tmp_path / "work_again"),
                 "--skip-bids-validation", "--reproduce", str(sidecar)])  # fmt:skip
    assert code == 0
    second = nb.load(again / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    np.testing.assert_allclose(second, chi, atol=1e-6)


def test_two_pass_runs_end_to_end_and_reproduces(tmp_path):
    bids = write_dataset(
        tmp_path / "bids", shape=(64, 76, 56), voxel_size=(3.0, 3.0, 3.0),
        echo_times=(0.005, 0.012, 0.019, 0.026), seed=4,
    )  # fmt:skip
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--two-pass"])  # fmt:skip
    assert code == 0
    sidecar = out / "sub-01" / "anat" / "sub-01_Chimap.json"
    two_pass = json.loads(sidecar.read_text())["DipoleInversion"]["two_pass"]
    assert two_pass["voxels_from_pass2"] > 0
    assert "Stewart AW" in (out / "logs" / "CITATION.md").read_text()
    true_chi, _, brain, _ = _truth(bids, "sub-01")
    chi = nb.load(sidecar.with_suffix(".nii.gz")).get_fdata()
    inside = brain & (chi != 0)
    assert np.corrcoef(chi[inside], true_chi[inside])[0, 1] > 0.5
    again = tmp_path / "again"
    code = main([str(bids), str(again), "participant", "-w", str(tmp_path / "work_again"),
                 "--skip-bids-validation", "--reproduce", str(sidecar)])  # fmt:skip
    assert code == 0
    again_chi = nb.load(again / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    np.testing.assert_allclose(again_chi, chi, atol=1e-6)
