"""A dataset broken the way users break them: every broken subject is named in one line, the
healthy one is processed completely, and the (read-only) input is left exactly as it was.

One tiny phantom subject (40x48x36 at 4 mm, three echoes) is copied under other labels, and each
copy is damaged once; the command runs as users run it, BIDS validation included.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import stat
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from bids_qsm.phantom import write_dataset

TINY = {"shape": (40, 48, 36), "voxel_size": (4.0, 4.0, 4.0), "echo_times": (0.005, 0.012, 0.019)}


def _name(label, echo, part):
    return f"sub-{label}/anat/sub-{label}_echo-{echo}_part-{part}_MEGRE"


def _rewrite(path, data, affine=None):
    img = nb.load(path)
    nb.save(nb.Nifti1Image(np.asarray(data, np.float32), img.affine if affine is None else affine),
            path)  # fmt:skip


def _truncated(bids, label):  # a copy that stopped half-way
    path = bids / f"{_name(label, 3, 'mag')}.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _no_echo_time(bids, label):  # a sidecar edited by hand
    path = bids / f"{_name(label, 2, 'phase')}.json"
    sidecar = json.loads(path.read_text())
    del sidecar["EchoTime"]
    path.write_text(json.dumps(sidecar))
    return path


def _coil_channels(bids, label):  # exported with "save uncombined"
    path = bids / f"{_name(label, 1, 'phase')}.nii.gz"
    _rewrite(path, np.repeat(nb.load(path).get_fdata()[..., None], 32, axis=-1))
    return path


def _stacked_echoes(bids, label):  # echoes merged into one 4-D file
    path = bids / f"{_name(label, 1, 'mag')}.nii.gz"
    echoes = [nb.load(bids / f"{_name(label, e, 'mag')}.nii.gz").get_fdata() for e in (1, 2, 3)]
    _rewrite(path, np.stack(echoes, axis=-1))
    return path


def _silent_magnitude(bids, label):  # a failed reconstruction
    path = bids / f"{_name(label, 1, 'mag')}.nii.gz"
    _rewrite(path, np.zeros(nb.load(path).shape))
    return path


def _nan_phase(bids, label):  # a failed unwrapping / masking tool upstream
    path = bids / f"{_name(label, 2, 'phase')}.nii.gz"
    _rewrite(path, np.full(nb.load(path).shape, np.nan))
    return path


def _phase_in_degrees(bids, label):  # converted by a script, Units left at "rad"
    path = bids / f"{_name(label, 2, 'phase')}.nii.gz"
    _rewrite(path, np.degrees(nb.load(path).get_fdata()))
    return path


def _echo_times_swapped(bids, label):  # sidecars of echoes 2 and 3 exchanged
    two, three = (bids / f"{_name(label, e, 'mag')}.json" for e in (2, 3))
    text = two.read_text()
    two.write_text(three.read_text())
    three.write_text(text)
    return three


def _other_orientation(bids, label):  # a phase resliced by another tool
    path = bids / f"{_name(label, 2, 'phase')}.nii.gz"
    img = nb.load(path)
    _rewrite(path, img.get_fdata()[::-1], affine=img.affine @ _flip_x(img.shape[0]))
    return path


def _flip_x(n):
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = n - 1
    return flip


DAMAGES = {
    "truncated": _truncated, "noechotime": _no_echo_time, "coils": _coil_channels,
    "stacked": _stacked_echoes, "silent": _silent_magnitude, "nanphase": _nan_phase,
    "degrees": _phase_in_degrees, "swapped": _echo_times_swapped, "resliced": _other_orientation,
}  # fmt:skip


def _clone(bids, label):
    source = bids / "sub-01"
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = bids / f"sub-{label}" / path.relative_to(source)
            target = target.with_name(path.name.replace("sub-01", f"sub-{label}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def checksums(folder):
    """{relative path: (sha256, mode)} of every file and folder below `folder`."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        sums[key] = (content, stat.S_IMODE(path.lstat().st_mode))
    return sums


def read_only(folder):
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    bids = write_dataset(root / "bids", subjects=1, seed=5, **TINY)
    shutil.rmtree(bids / "derivatives")  # the truth: not needed, and not what users have
    (bids / ".bidsignore").unlink()
    damaged = {}
    for label, damage in DAMAGES.items():
        _clone(bids, label)
        damaged[label] = damage(bids, label)
    (bids / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in ["01", *DAMAGES])
    )
    read_only(bids)
    before = checksums(bids)
    out = root / "out"
    # as users run it: a command of its own, whose stderr (its workers' too) is all there is
    result = subprocess.run(
        [sys.executable, "-m", "bids_qsm.cli.run", str(bids), str(out), "participant",
         "-w", str(root / "work"), "--inversion-method", "tikhonov"],
        capture_output=True, text=True, timeout=600,
    )  # fmt:skip
    return bids, out, result, damaged, before


def test_broken_subjects_are_named_and_the_healthy_one_finishes(broken_run):
    bids, out, result, damaged, before = broken_run
    code, err = result.returncode, result.stderr
    assert code in (16, 66), (code, err)  # input refused, nothing failed in processing
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bids_qsm: error:")]
    for label, path in damaged.items():  # the image or its sidecar, by its full path
        stem = str(path).split(".", 1)[0]
        assert any(stem in line for line in lines), (label, lines)
        assert not (out / f"sub-{label}" / "anat").exists(), label
    anat = out / "sub-01" / "anat"
    for name in ("Chimap", "desc-brain_mask", "R2starmap", "T2starmap"):
        assert (anat / f"sub-01_{name}.nii.gz").is_file(), name
        assert (anat / f"sub-01_{name}.json").is_file(), name
    chi = nb.load(anat / "sub-01_Chimap.nii.gz").get_fdata()
    mask = nb.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0
    assert mask.sum() > 1000 and np.isfinite(chi).all() and np.any(chi[mask] != 0)


def test_broken_subjects_get_a_report_that_says_why(broken_run):
    _, out, _, damaged, _ = broken_run
    for label in ("truncated", "coils", "swapped", "silent", "nanphase"):
        stem = damaged[label].name.split(".", 1)[0]  # the file at fault, by name
        assert stem in (out / f"sub-{label}.html").read_text(), label


def test_the_input_dataset_is_not_touched(broken_run):
    bids, _, _, _, before = broken_run
    assert checksums(bids) == before
    assert not list(bids.rglob("*.db")) and not (bids / "derivatives").exists()


def test_gzip_of_the_truncated_file_is_really_broken(broken_run):
    """The damage is what it claims to be (guards the test above against a no-op)."""
    _, _, _, damaged, _ = broken_run
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(damaged["truncated"].read_bytes())
