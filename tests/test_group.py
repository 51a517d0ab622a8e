"""Group level on a fake output tree: long table, QC outliers, missing subjects, figure."""

import csv
import json
import zlib

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.group import bids_subjects, run_group
from bids_qsm.qsm.roi import roi_statistics
from bids_qsm.segmentation import write_roi_table

NAMES = {4: "Left-Lateral-Ventricle", 12: "Left-Putamen", 13: "Left-Pallidum"}
# (subject, session, acq, run): pallidum chi (ppm), brain half-width (voxels)
RUNS = {
    ("01", "1", None, None): (0.150, 6),
    ("01", "2", None, None): (0.155, 6),
    ("02", "1", None, "1"): (0.145, 6),
    ("02", "1", None, "2"): (0.148, 6),
    ("04", None, "fast", None): (0.152, 6),
    ("05", "1", None, None): (0.600, 12),  # planted outlier: huge mask, pallidum off the chart
}


def ents(sub, ses, acq, run):
    parts = [f"sub-{sub}", ses and f"ses-{ses}", acq and f"acq-{acq}", run and f"run-{run}"]
    return "_".join(p for p in parts if p)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_runs(out, runs, *, seed=0, noise_ppm=0.01):
    """One fake participant-level output per run: mask, Chimap (+ sidecar), region table.

    The noise is seeded from the run's name and `seed`, never from the machine (paths).
    """
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for (sub, ses, acq, run), (pallidum, half) in runs.items():
        anat = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        prefix = anat / ents(sub, ses, acq, run)
        mask = np.zeros((32, 32, 32), bool)
        mask[16 - half : 16 + half, 16 - half : 16 + half, 16 - half : 16 + half] = True
        labels = np.zeros(mask.shape, np.int16)
        labels[12:15, 12:20, 12:20], labels[15:17, 12:20, 12:20], labels[17:20, 12:20, 12:20] = (
            4, 12, 13
        )  # fmt: skip
        rng = np.random.default_rng([seed, zlib.crc32(prefix.name.encode())])
        chi = np.where(labels == 13, pallidum, np.where(labels == 12, 0.08, 0.0))
        chi = np.where(mask, chi + rng.normal(0, noise_ppm, mask.shape), 0).astype(np.float32)
        nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(
            f"{prefix}_desc-brain_mask.nii.gz"
        )
        nb.Nifti1Image(chi, affine).to_filename(f"{prefix}_Chimap.nii.gz")
        warnings = ["phase rescaled"] if sub == "02" else []
        (anat / f"{prefix.name}_Chimap.json").write_text(json.dumps({"Warnings": warnings}))
        rows = roi_statistics(chi, mask, labels, voxel_size=(2, 2, 2), names=NAMES)
        write_roi_table(f"{prefix}_desc-roistats_Chimap.tsv", rows)


@pytest.fixture
def output_dir(tmp_path):
    out = tmp_path / "derivatives"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_runs(out, RUNS)
    # A subject whose pipeline made a map but had no segmentation.
    anat = out / "sub-06" / "anat"
    anat.mkdir(parents=True)
    nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), affine).to_filename(
        anat / "sub-06_Chimap.nii.gz"
    )
    return out


def test_long_table_has_one_row_per_run_and_label_with_the_run_values(output_dir):
    result = run_group(output_dir, expected_subjects=["sub-01", "02", "sub-03", "sub-04",
                                                      "sub-05", "sub-06"])  # fmt: skip
    rows = read(result.table)
    assert list(rows[0])[:4] == ["participant_id", "session_id", "acq", "run"]
    assert list(rows[0])[4:] == ["index", "name", "n_voxels", "volume_mm3", "mean", "median",
                                 "std", "p25", "p75"]  # fmt: skip
    keys = [(r["participant_id"], r["session_id"], r["acq"], r["run"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * len(RUNS)
    for sub, ses, acq, run in RUNS:
        prefix = ents(sub, ses, acq, run)
        anat = output_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        per_run = read(anat / f"{prefix}_desc-roistats_Chimap.tsv")
        mine = [r for r in rows if r["participant_id"] == f"sub-{sub}"
                and r["session_id"] == (f"ses-{ses}" if ses else "n/a")
                and r["acq"] == (acq or "n/a") and r["run"] == (run or "n/a")]  # fmt: skip
        assert [{k: r[k] for k in per_run[0]} for r in mine] == per_run
    assert result.missing_subjects == ["sub-03", "sub-06"]
    missing = {
        r["participant_id"]: r["reason"]
        for r in read(output_dir / "group/desc-missing_subjects.tsv")
    }
    assert missing == {"sub-03": "no outputs", "sub-06": "no region table (no segmentation?)"}
    svg = result.figure.read_text()
    assert result.figure.name == "desc-roistats_Chimap.svg" and "Left-Pallidum" in svg


def test_qc_flags_the_planted_outlier(output_dir):
    result = run_group(output_dir)
    qc = {(r["participant_id"], r["session_id"], r["acq"], r["run"]): r for r in read(result.qc)}
    assert len(qc) == len(RUNS) + 1  # sub-06's map is in the QC table too
    assert result.outliers == ["sub-05_ses-1"]
    bad = qc[("sub-05", "ses-1", "n/a", "n/a")]
    assert bad["outlier"] == "True"
    assert (
        "mask_volume_mm3" in bad["outlier_reasons"]
        and "Left-Pallidum mean" in bad["outlier_reasons"]
    )
    assert float(bad["mask_volume_mm3"]) == (24**3) * 8
    good = qc[("sub-01", "ses-1", "n/a", "n/a")]
    assert good["outlier"] == "False" and good["warnings"] == "n/a"
    assert float(good["extreme_fraction"]) == 0.0
    assert float(bad["extreme_fraction"]) > 0  # the 0.6 ppm pallidum is beyond 0.5 ppm
    assert qc[("sub-02", "ses-1", "n/a", "1")]["warnings"] == "phase rescaled"
    assert "no brain mask" in qc[("sub-06", "n/a", "n/a", "n/a")]["warnings"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_qc_flags_nothing_in_a_cohort_of_one_protocol(tmp_path, seed):
    """Runs a few ppb apart (one protocol, scan-rescan spread) are ordinary, not outliers; a run
    off by 0.1 ppm in one region or with a mask over three times as large still is."""
    rng = np.random.default_rng(seed)
    cohort = {
        (f"{i:02d}", None, None, None): (0.150 + rng.normal(0, 0.003), 6) for i in range(1, 9)
    }
    write_runs(tmp_path, cohort, seed=seed, noise_ppm=0.002)
    result = run_group(tmp_path)
    assert result.outliers == []

    off = tmp_path / "off"
    write_runs(off, {**cohort, ("09", None, None, None): (0.25, 6),
                     ("10", None, None, None): (0.150, 9)}, seed=seed, noise_ppm=0.002)  # fmt: skip
    result = run_group(off)
    assert result.outliers == ["sub-09", "sub-10"]
    qc = {r["participant_id"]: r for r in read(result.qc)}
    assert "Left-Pallidum mean" in qc["sub-09"]["outlier_reasons"]
    assert "mask_volume_mm3" in qc["sub-10"]["outlier_reasons"]
    floors = json.loads((off / "group/desc-qc_Chimap.json").read_text())["SpreadFloors"]
    assert floors["region_mean_ppm"] == 0.01


def test_empty_output_dir_lists_everyone_as_missing(tmp_path):
    result = run_group(tmp_path, expected_subjects=["01"])
    assert result.table is None and result.figure is None and result.n_runs == 0
    assert result.missing_subjects == ["sub-01"] and result.qc.is_file()


def test_bids_subjects_from_participants_or_folders(tmp_path):
    (tmp_path / "sub-b").mkdir()
    (tmp_path / "sub-a").mkdir()
    assert bids_subjects(tmp_path) == ["sub-a", "sub-b"]
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-a\t30\nsub-c\t40\n")
    assert bids_subjects(tmp_path) == ["sub-a", "sub-c"]
    assert bids_subjects(tmp_path, participant_label=["c"]) == ["sub-c"]
