"""A run killed with SIGKILL during the dipole inversion, started again with the same work
directory, computes none of its finished nodes again and writes what an uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.phantom import write_dataset

pytestmark = pytest.mark.slow


def _command(bids, out, work):
    return [
        sys.executable, "-m", "bids_qsm.cli.run", str(bids), str(out), "participant",
        "-w", str(work), "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1",
    ]  # fmt:skip


def _results(work):
    """{node folder: modification time (ns) of its result file} of every finished node."""
    return {p.parent: p.stat().st_mtime_ns for p in Path(work).rglob("result_*.pklz")}


def _outputs(out):
    """{path under out: decoded content} of every map and sidecar."""
    found = {}
    for path in sorted(Path(out).rglob("sub-*/anat/*")):
        name = str(path.relative_to(out))
        if name.endswith(".nii.gz"):
            found[name] = np.asanyarray(nb.load(path).dataobj)
        elif name.endswith(".json"):
            found[name] = json.loads(path.read_text())
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One small phantom whose inversion lasts long enough to be caught (3 mm voxels)."""
    root = tmp_path_factory.mktemp("resume")
    bids = write_dataset(
        root / "bids", shape=(64, 74, 54), voxel_size=(3.0, 3.0, 3.0),
        echo_times=(0.005, 0.015, 0.025), oversample=1,
    )  # fmt:skip
    return root, bids


def _kill_during_inversion(command, work, timeout=600):
    """Start `command`, SIGKILL it (all its processes) once the inversion has started; the
    inversion node's folder."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not (started := list(Path(work).rglob("invert/_node.pklz"))):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the inversion never started"
            time.sleep(0.05)
        time.sleep(0.3)  # well into the inversion, which lasts seconds
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    return started[0].parent


def test_a_killed_run_resumes_without_recomputing_and_writes_the_same(dataset):
    root, bids = dataset
    work, out = root / "work", root / "out"
    invert_dir = _kill_during_inversion(_command(bids, out, work), work)
    finished = _results(work)
    assert not (invert_dir / "result_invert.pklz").exists(), "killed too late"
    assert len(finished) >= 6, sorted(str(p) for p in finished)
    # nothing half-written: the maps are written after the inversion, so none is there yet
    assert not list(out.rglob("*Chimap*"))

    resumed = subprocess.run(
        _command(bids, out, work), capture_output=True, text=True, timeout=900
    )  # fmt:skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _results(work)
    recomputed = [str(p) for p, mtime in finished.items() if after[p] != mtime]
    assert recomputed == []
    assert (invert_dir / "result_invert.pklz").exists()
    # the progress lines say so too: every finished computing stage was reused
    reused = resumed.stderr.count("reused from the work directory")
    assert reused == sum(1 for p in finished if p.name in _STAGES), resumed.stderr[-3000:]

    whole = subprocess.run(
        _command(bids, root / "out_whole", root / "work_whole"),
        capture_output=True, text=True, timeout=900,
    )  # fmt:skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected, got = _outputs(root / "out_whole"), _outputs(out)
    assert sorted(got) == sorted(expected) and "sub-01/anat/sub-01_Chimap.nii.gz" in got
    for name, value in expected.items():
        if name.endswith(".json"):
            assert got[name] == value, name
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert not list(out.rglob(".bids_qsm-staging-*")), "a staging folder was left behind"


_STAGES = {"phase_units", "mask", "unwrap", "combine", "relaxometry", "background", "invert",
           "reference", "swi", "figures", "foci", "veins", "lesions"}  # fmt:skip
