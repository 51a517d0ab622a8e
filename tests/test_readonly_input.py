"""BIDS_DIR is never written to: both levels, run as users run them (no --work-dir, BIDS
validation on), on a read-only copy whose every file and folder is checksummed before and after.

Root may write to read-only files anyway, so the checksums, not the permissions, are the test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_broken_datasets import TINY, checksums, read_only

from bids_qsm.phantom import write_dataset


@pytest.fixture(scope="module")
def read_only_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("readonly")
    bids = write_dataset(root / "bids", subjects=1, seed=2, **TINY)
    read_only(bids)
    before = checksums(bids)
    tmp = root / "tmp"  # the default work directory lands in TMPDIR
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    results = [
        subprocess.run(
            [sys.executable, "-m", "bids_qsm.cli.run", str(bids), str(root / "out"), level, *extra],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )  # fmt:skip
        for level, extra in (("participant", ["--inversion-method", "tkd"]), ("group", []))
    ]
    return bids, root, before, results, tmp


def test_participant_and_group_levels_leave_the_input_unchanged(read_only_run):
    bids, root, before, (participant, group), tmp = read_only_run
    assert participant.returncode == 0, participant.stderr[-3000:]
    assert group.returncode in (0, 18), group.stderr[-3000:]  # 18: no region tables to gather
    assert (root / "out" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()
    assert (tmp / "bids_qsm_work" / "bids_db").is_dir()  # the index went to the work directory
    assert checksums(bids) == before
