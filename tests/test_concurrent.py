"""Several `participant` runs at once, on disjoint participants, into one output folder (as a
job array does) leave one valid derivatives dataset with every participant's outputs."""

import json
import multiprocessing
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.derivatives import BIDSIGNORE, init_derivatives
from bids_qsm.phantom import write_dataset
from bids_qsm.validation import validate

pytestmark = pytest.mark.slow

SUBJECTS = ("01", "02", "03")
MAPS = ("Chimap", "desc-brain_mask", "R2starmap", "T2starmap", "desc-local_fieldmap",
        "desc-total_fieldmap", "swi", "minIP")  # fmt:skip


def test_participant_runs_at_once_into_one_folder(tmp_path):
    bids = write_dataset(
        tmp_path / "bids", subjects=len(SUBJECTS), shape=(48, 56, 40),
        voxel_size=(4.0, 4.0, 4.0), echo_times=(0.005, 0.015, 0.025), oversample=1,
    )  # fmt:skip
    out = tmp_path / "out"
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bids_qsm.cli.run",
                str(bids),
                str(out),
                "participant",
                "--participant-label",
                subject,
                "-w",
                str(tmp_path / f"work_{subject}"),
                "--skip-bids-validation",
                "--nprocs",
                "1",
                "--omp-nthreads",
                "1",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt:skip
        for subject in SUBJECTS
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]

    for subject in SUBJECTS:
        anat = out / f"sub-{subject}" / "anat"
        for name in MAPS:
            image = nb.load(anat / f"sub-{subject}_{name}.nii.gz")
            assert np.isfinite(image.get_fdata()).all()
            assert json.loads((anat / f"sub-{subject}_{name}.json").read_text())
        assert (out / f"sub-{subject}.html").is_file()
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    ignored = (out / ".bidsignore").read_text().splitlines()
    assert sorted(ignored) == sorted(BIDSIGNORE), "lines lost or repeated"
    assert len(list((out / "logs").glob("config-*.toml"))) == len(SUBJECTS)
    assert "### References" in (out / "logs" / "CITATION.md").read_text()
    assert not list(out.rglob(".bids_qsm-staging-*")) and not list(out.rglob(".*.json.*"))
    assert validate(out) == []


def test_dataset_description_is_written_once_and_whole(tmp_path):
    """The first run's description stays; a later run into the folder does not rewrite it."""
    out = tmp_path / "out"
    init_derivatives(out, bids_dir=tmp_path)
    first = (out / "dataset_description.json").stat()
    init_derivatives(out, bids_dir=tmp_path)
    again = (out / "dataset_description.json").stat()
    assert (first.st_ino, first.st_mtime_ns) == (again.st_ino, again.st_mtime_ns)
    assert (out / ".bidsignore").read_text().splitlines() == list(BIDSIGNORE)
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json"]


def _init(args):
    out, bids = args
    init_derivatives(out, bids_dir=bids)


def test_many_processes_initialising_one_folder_leave_it_whole(tmp_path):
    out = tmp_path / "out"
    # 400 calls: the earlier shared temporary name failed most tries (a missing file, or a
    # description read half-written)
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_init, [(out, tmp_path)] * 400, chunksize=1)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / ".bidsignore").read_text().splitlines() == list(BIDSIGNORE)
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json"]
