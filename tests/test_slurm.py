"""Nipype's SLURM plugins on a real (single-node, localhost) SLURM cluster give the local maps.

The cluster is installed from Debian's packages when missing and started in a private folder
(tests/slurm_cluster.py); the test skips where that cannot be done (not root, no apt-get).
"""

import json
import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest
from slurm_cluster import LocalSlurm, Unavailable, ensure_installed

from bids_qsm.phantom import write_dataset

pytestmark = pytest.mark.slow

MAPS = ("Chimap", "desc-brain_mask", "R2starmap", "desc-local_fieldmap")
SUBJECTS = ("01", "02")


@pytest.fixture(scope="module")
def cluster():
    try:
        ensure_installed()
    except Unavailable as err:
        pytest.skip(f"no SLURM here: {err}")
    slurm = LocalSlurm()
    try:
        slurm.start()
    except Unavailable as err:
        pytest.fail(f"the SLURM cluster did not start: {err}\n{slurm.logs()}")
    try:
        yield slurm
    finally:
        slurm.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two tiny phantom subjects (4 mm voxels, three echoes): the scheduler is under test."""
    root = tmp_path_factory.mktemp("slurm")
    bids = write_dataset(
        root / "bids", subjects=len(SUBJECTS), shape=(48, 56, 40), voxel_size=(4.0, 4.0, 4.0),
        echo_times=(0.005, 0.015, 0.025), oversample=1,
    )  # fmt:skip
    return root, bids


def _bids_qsm(bids, out, work, *options, env=None):
    command = [
        sys.executable, "-m", "bids_qsm.cli.run", str(bids), str(out), "participant",
        "-w", str(work), "--skip-bids-validation", "--omp-nthreads", "1", *options,
    ]  # fmt:skip
    env = env or os.environ
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def local_run(dataset):
    root, bids = dataset
    done = _bids_qsm(bids, root / "local", root / "work_local", "--nprocs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "local"


def _assert_same_maps(out, reference):
    for subject in SUBJECTS:
        for name in MAPS:
            path = f"sub-{subject}/anat/sub-{subject}_{name}.nii.gz"
            mine, theirs = nb.load(out / path), nb.load(reference / path)
            np.testing.assert_array_equal(mine.get_fdata(), theirs.get_fdata(), err_msg=path)
            np.testing.assert_array_equal(mine.affine, theirs.affine, err_msg=path)


def _jobs(cluster, batch):
    """The finished jobs (kept MinJobAge = 300 s) whose batch scripts lie in `batch`."""
    listing = cluster.run(["scontrol", "show", "job", "--oneliner"]).stdout
    jobs = []
    for line in listing.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("Command", "").startswith(f"{batch}/"):
            jobs.append(fields)
    return jobs


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_slurm_run_gives_the_local_maps(cluster, dataset, local_run, plugin):
    root, bids = dataset
    work, out = root / f"work_{plugin}", root / f"out_{plugin}"
    if plugin == "SLURM":
        plugin_args = json.dumps({"sbatch_args": "--time=30", "max_jobs": 8})
    else:  # a YAML file, as a cluster's users keep them
        plugin_args = root / "plugin_args.yml"
        plugin_args.write_text("sbatch_args: --time=30\ndont_resubmit_completed_jobs: true\n")
    # Nipype names the jobs after $LOGNAME, which batch and container environments may lack
    env = {**os.environ, **cluster.env}
    env.pop("LOGNAME")
    done = _bids_qsm(bids, out, work, "--nipype-plugin", plugin, "--plugin-args", str(plugin_args),
                     env=env)  # fmt:skip
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{cluster.logs()}"
    _assert_same_maps(out, local_run)
    # every computing node ran as a job, which asked for the node's estimated memory
    batch = work / "bids_qsm_wf" / "batch"
    jobs = _jobs(cluster, batch)
    assert len(jobs) >= 10 * len(SUBJECTS), jobs
    assert all(job["JobState"] == "COMPLETED" for job in jobs), jobs
    memory = [job["MinMemoryNode"] for job in jobs]
    assert all(m.endswith("M") and 0 < int(m[:-1]) < 4000 for m in memory), memory
    assert len(set(memory)) >= 3, memory  # per step, not one size for all
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
