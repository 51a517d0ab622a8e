"""Reruns give byte-identical maps, whatever the paths and the temporary folder.

The same participant run twice as separate commands (other output and work folders; the second
with a TMPDIR of over 100 characters, as batch systems give jobs) must write the same bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.phantom import write_dataset

TINY = {"shape": (40, 48, 36), "voxel_size": (4.0, 4.0, 4.0), "echo_times": (0.005, 0.012, 0.019)}
MAPS = ("Chimap", "desc-brain_mask", "R2starmap", "T2starmap", "desc-local_fieldmap")

_TGV_ON_A_BALL = """
import sys
import numpy as np
from bids_qsm.qsm import tgv
grid = np.indices((24, 24, 24)) - 11.5
ball = (grid**2).sum(0) < 81
lap = np.where(ball, np.sin(grid[0] / 3) * np.cos(grid[2] / 4), 0).astype(np.float32)
chi, _ = tgv.solve(lap, ball, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), alpha1=0.016,
                   alpha0=0.048, iterations=60, tol=1e-12)
np.save(sys.argv[1], chi)
"""


def _command(bids, out, work, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bids_qsm.cli.run", str(bids), str(out), "participant",
         "-w", str(work), "--skip-bids-validation", "--nprocs", "2"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )  # fmt:skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    bids = write_dataset(root / "bids", subjects=1, seed=11, **TINY)
    # Compiled kernels from the cache: a kernel compiled in the run itself may round otherwise
    # (see test_fresh_and_cached_tgv_kernels_agree), and that is not what this test is about.
    subprocess.run([sys.executable, "-c", _TGV_ON_A_BALL, str(root / "warm.npy")], check=True)
    first = _command(bids, root / "out1", root / "work1")
    long_tmp = root / "scratch" / "site-cluster" / "user-with-a-long-name" / "job-4242424242"
    long_tmp = long_tmp / "task-000001" / "tmp"
    long_tmp.mkdir(parents=True)
    second = _command(bids, root / "out2", root / "work2", env={"TMPDIR": str(long_tmp)})
    return root, first, second, long_tmp


def test_long_tmpdir_run_gives_the_same_maps(two_runs):
    root, first, second, long_tmp = two_runs
    assert len(str(long_tmp)) > 100
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "AF_UNIX" not in second.stderr
    for name in MAPS:
        a = root / "out1" / "sub-01" / "anat" / f"sub-01_{name}.nii.gz"
        b = root / "out2" / "sub-01" / "anat" / f"sub-01_{name}.nii.gz"
        assert a.read_bytes() == b.read_bytes(), name


def test_rerun_maps_are_finite_and_not_empty(two_runs):
    """Guards the comparison above against two identical failures."""
    root, *_ = two_runs
    chi = nb.load(root / "out1" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
    assert np.isfinite(chi).all() and np.count_nonzero(chi) > 1000


def test_fresh_and_cached_tgv_kernels_agree(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    for name in ("fresh", "cached"):
        subprocess.run([sys.executable, "-c", _TGV_ON_A_BALL, str(tmp_path / f"{name}.npy")],
                       env=env, check=True, timeout=600)  # fmt:skip
    fresh, cached = np.load(tmp_path / "fresh.npy"), np.load(tmp_path / "cached.npy")
    assert np.abs(fresh).max() > 0
    assert np.array_equal(fresh, cached)
