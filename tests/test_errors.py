"""Every input problem of docs/errors.md: its one line (naming the file) and its exit code.

Problems found before anything runs are tested through `main` on tiny datasets (8x8x4 images,
nothing is processed); problems found when a run's images are loaded through `load_input`, the
function the pipeline loads them with (tests/test_broken_datasets.py runs them end to end).
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from bids_layouts import AFFINE, SHAPE, add_run, edit_sidecar, make_dataset, sidecar_of

from bids_qsm.cli import run as cli
from bids_qsm.cli.run import main
from bids_qsm.interfaces.nifti import InputDataError, load_input

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@pytest.fixture
def ds(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds")


def _main(tmp_path, bids, *args, capsys):
    """(exit code, stderr lines) of a participant run of `bids` with our error lines."""
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", *args])  # fmt:skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("bids_qsm: error:")]


def _one_line_about(lines, path, fragment):
    hits = [line for line in lines if str(path) in line and fragment in line]
    assert len(hits) == 1, (path, fragment, lines)
    return hits[0]


def _write(path, data, affine=AFFINE):
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)


# --- found before processing: the run is left out, exit 66 ------------------------------------


def _empty(files):
    files[("2", "phase")].write_bytes(b"")
    return files[("2", "phase")], "cannot read NIfTI: the file is empty (0 bytes)"


def _truncated_gzip(files):
    path = files[("1", "mag")]
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path, "cannot read NIfTI: "


def _not_a_nifti(files):
    path = files[("3", "phase")]
    path.write_bytes(gzip.compress(b"<html>Access denied</html>"))
    return path, "cannot read NIfTI: not a NIfTI image"


def _broken_link(files):
    path = files[("2", "mag")]
    path.unlink()
    path.symlink_to("../../.git/annex/objects/XX/missing.nii.gz")
    return path, "broken symbolic link"


def _no_sidecar(files):
    sidecar_of(files[("1", "mag")]).unlink()
    return files[("1", "mag")], "no JSON sidecar with EchoTime (echo 1)"


def _no_echo_time(files):
    edit_sidecar(files[("2", "mag")], drop=["EchoTime"])
    return sidecar_of(files[("2", "mag")]), "no EchoTime in the sidecar (echo 2)"


def _no_field_strength(files):
    for path in files.values():
        edit_sidecar(path, drop=["MagneticFieldStrength"])
    return sidecar_of(files[("1", "mag")]), "no MagneticFieldStrength (tesla)"


def _equal_echo_times(files):
    for part in ("mag", "phase"):
        edit_sidecar(files[("3", part)], EchoTime=0.008)
    return sidecar_of(files[("3", "mag")]), "EchoTime 0.008 s of echo 3 repeats that of"


def _decreasing_echo_times(files):
    for part in ("mag", "phase"):
        edit_sidecar(files[("3", part)], EchoTime=0.006)
    return sidecar_of(files[("3", "mag")]), "EchoTime 0.006 s of echo 3 is earlier than 0.008 s"


def _other_grid(files):
    _write(files[("2", "phase")], np.ones((8, 8, 5)))
    return files[("2", "phase")], "shape (8, 8, 5) differs from (8, 8, 4)"


def _other_orientation(files):
    flipped = AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0])
    _write(files[("1", "phase")], np.ones(SHAPE), affine=flipped)
    return files[("1", "phase")], "affine differs from that of"


def _stacked_echoes(files):
    _write(files[("1", "mag")], np.ones((*SHAPE, 3)))
    return files[("1", "mag")], "3 volumes stacked in one file (echoes?)"


def _coil_channels(files):
    _write(files[("1", "phase")], np.ones((*SHAPE, 32)))
    return files[("1", "phase")], "32 volumes look like uncombined receive-coil channels"


def _missing_part(files):
    files[("2", "phase")].unlink()
    return files[("2", "mag")], "no phase image (part-phase) for echo 2"


def _invalid_json(files):
    sidecar_of(files[("1", "phase")]).write_text('{"EchoTime": 0.004,')
    return sidecar_of(files[("1", "phase")]), "invalid JSON"


def _field_in_millitesla(files):
    for path in files.values():
        edit_sidecar(path, MagneticFieldStrength=3000)
    return sidecar_of(files[("1", "mag")]), "MagneticFieldStrength 3000 is not in tesla"


def _single_slices(files):
    _write(files[("1", "mag")], np.ones((8, 8, 2)))
    return files[("1", "mag")], "QSM needs at least 4 voxels along every axis"


def _zero_voxel_size(files):  # an sform with a zero column (nibabel repairs a zero pixdim)
    img = nb.Nifti1Image(np.ones(SHAPE, dtype=np.float32), AFFINE)
    img.header.set_qform(None, code=0)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    img.update_header = lambda: None  # keep the broken sform as it is
    img.to_filename(files[("2", "mag")])
    return files[("2", "mag")], "is not a real one (pixdim, sform)"


def _complex_valued(files):
    path = files[("3", "phase")]
    nb.save(nb.Nifti1Image(np.ones(SHAPE, dtype=np.complex64), AFFINE), path)
    return path, "is not real-valued: give magnitude and phase"


def _not_gzipped(files):
    path = files[("1", "phase")]
    path.write_bytes(gzip.decompress(path.read_bytes()))
    return path, "named .gz but not gzip-compressed"


INGEST = [
    _empty, _truncated_gzip, _not_a_nifti, _broken_link, _no_sidecar, _no_echo_time,
    _no_field_strength, _equal_echo_times, _decreasing_echo_times, _other_grid,
    _other_orientation, _stacked_echoes, _coil_channels, _missing_part, _invalid_json,
    _field_in_millitesla, _single_slices, _zero_voxel_size, _complex_valued, _not_gzipped,
]  # fmt:skip


@pytest.mark.parametrize("damage", INGEST, ids=[f.__name__.lstrip("_") for f in INGEST])
def test_ingest_problem_is_one_line_naming_the_file_exit_66(ds, tmp_path, capsys, damage):
    files = add_run(ds, echo_times=(0.004, 0.008, 0.012))
    path, fragment = damage(files)
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 66
    _one_line_about(lines, path, fragment)
    assert lines[-1].endswith("no usable MEGRE run left to process")
    assert not (tmp_path / "out" / "sub-01").exists()


def test_subject_without_megre_is_named(ds):
    from bids_qsm.bids import collect_runs

    add_run(ds, "01")
    (ds / "sub-02" / "anat").mkdir(parents=True)  # copied half-way: nothing arrived
    runs, problems = collect_runs(ds)
    assert [run.subject for run in runs] == ["01"]
    assert [str(p) for p in problems] == [f"{ds / 'sub-02'}: no MEGRE images (anat/*_MEGRE"
                                          ".nii[.gz]) found"]  # fmt:skip


def test_trailing_singleton_dimension_is_a_3d_image(ds):
    from bids_qsm.bids import collect_runs

    files = add_run(ds)
    _write(files[("1", "phase")], np.ones((*SHAPE, 1)))
    (run,), problems = collect_runs(ds)
    assert problems == [] and run.grid[0] == SHAPE


# --- found when a run's images are loaded: that run fails, the others go on -------------------


def _image(tmp_path, data, name="img.nii.gz"):
    path = tmp_path / name
    _write(path, data)
    return path


@pytest.mark.parametrize(
    ("part", "units", "make", "fragment"),
    [
        ("mag", "auto", lambda s: np.zeros(s), "every voxel is 0 (no signal)"),
        ("mag", "auto", lambda s: -np.ones(s), "% of the voxels are negative"),
        ("phase", "auto", lambda s: np.zeros(s), "every voxel is 0 (not a phase image)"),
        ("phase", "auto", lambda s: np.full(s, 2048.0), "a constant image is not a phase image"),
        ("phase", "rad", lambda s: np.linspace(-4096, 4095, np.prod(s)).reshape(s),
         "beyond any range of radians"),
        ("phase", "arbitrary", lambda s: np.linspace(0, 1e6, np.prod(s)).reshape(s),
         "beyond every known phase scaling"),
        ("phase", "auto", lambda s: np.full(s, np.nan), "every voxel is NaN or infinite"),
        ("mag", "auto", lambda s: np.full(s, np.inf), "every voxel is NaN or infinite"),
        ("mag", "auto", lambda s: np.where(np.arange(np.prod(s)).reshape(s) % 4, np.nan, 1.0),
         "75 % of the voxels are NaN or infinite"),
        ("imag", "auto", lambda s: np.zeros(s), "every voxel is 0 (no signal)"),
    ],
    ids=["mag-zero", "mag-negative", "phase-zero", "phase-constant", "phase-not-radians",
         "phase-no-known-scaling", "phase-nan", "mag-inf", "mag-mostly-nan", "imag-zero"],
)  # fmt:skip
def test_refused_on_loading_in_one_line_naming_the_file(tmp_path, part, units, make, fragment):
    path = _image(tmp_path, make((6, 5, 4)))
    with pytest.raises(InputDataError) as caught:
        load_input(path, part=part, units=units)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_loading_accepts_real_data_and_keeps_it(tmp_path):
    rng = np.random.default_rng(0)
    phase = rng.uniform(-np.pi, np.pi, (6, 5, 4))
    phase[0, 0, 0] = np.nan  # a few missing voxels are data, not a reason to refuse
    data, _ = load_input(_image(tmp_path, phase), part="phase", units="rad")
    assert np.array_equal(data, phase.astype(np.float32), equal_nan=True)
    magnitude = rng.uniform(0, 100, (6, 5, 4, 1))  # x*y*z*1 from some converters
    magnitude[1, 1, 1] = np.inf
    data, _ = load_input(_image(tmp_path, magnitude, "m.nii.gz"), part="mag")
    assert data.shape == (6, 5, 4) and data[1, 1, 1] == 0 and np.isfinite(data).all()


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [((6, 5, 4, 5), "5 volumes stacked in one file (echoes?)"),
     ((6, 5, 4, 32), "32 volumes look like uncombined receive-coil channels"),
     ((6, 5, 4, 3, 8), "24 volumes look like uncombined receive-coil channels")],
)  # fmt:skip
def test_stacked_volumes_refused_on_loading_with_a_hint(tmp_path, shape, fragment):
    path = _image(tmp_path, np.ones(shape))
    with pytest.raises(InputDataError, match=re.escape(fragment)):
        load_input(path, part="mag")


def test_damaged_file_refused_on_loading(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(InputDataError, match="cannot read NIfTI"):
        load_input(path, part="phase")


def _head_echoes(tmp_path):
    """Magnitude (two echoes of a decaying ball in noise) and a wrapped phase ramp of that ball."""
    rng = np.random.default_rng(2)
    x, y, z = np.mgrid[-1:1:16j, -1:1:14j, -1:1:12j]
    ball = (x**2 + y**2 + z**2 < 0.7).astype(float)
    magnitudes = [_image(tmp_path, 800 * ball * np.exp(-k / 3) + rng.rayleigh(20, ball.shape),
                         f"mag{k}.nii.gz") for k in (1, 2)]  # fmt: skip
    phase = np.angle(np.exp(1j * (3 * x + 2 * z))) * ball + (1 - ball) * rng.uniform(
        -np.pi, np.pi, ball.shape
    )
    return magnitudes, phase


def test_magnitude_given_as_the_phase_is_refused_naming_the_file(tmp_path):
    from bids_qsm.interfaces.fieldmap import LoadEchoes

    magnitudes, phase = _head_echoes(tmp_path)
    good = _image(tmp_path, phase, "phase1.nii.gz")
    LoadEchoes(magnitude=[str(m) for m in magnitudes], phase=[str(good)] * 2, units="rad").run(
        cwd=str(tmp_path)
    )
    # The second echo's magnitude copied into the first echo's phase: Siemens-like numbers.
    wrong = _image(tmp_path, nb.load(magnitudes[1]).get_fdata(), "phase2.nii.gz")
    with pytest.raises(InputDataError) as caught:  # also where the sidecar says radians
        LoadEchoes(
            magnitude=[str(m) for m in magnitudes], phase=[str(good), str(wrong)], units="rad"
        ).run(cwd=str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"{wrong}: its values follow the magnitude image mag2.nii.gz (")
    assert message.endswith("a magnitude image given as the phase (part-phase)?")


def _crash_file(folder, node, error_lines):
    folder.mkdir(parents=True, exist_ok=True)
    crash = folder / f"crash-{node.rsplit('.', 1)[-1]}.txt"
    crash.write_text(
        f"Node: {node}\nWorking directory: /w\n\nNode inputs:\n\nTraceback (most recent call "
        'last):\n  File "x.py", line 1, in y\nnipype.pipeline.engine.nodes.NodeExecutionError: '
        "Exception raised while executing Node z.\n\nTraceback:\n\tTraceback (most recent call "
        'last):\n\t  File "a.py", line 2, in b\n' + "".join(f"\t{e}\n" for e in error_lines)
    )
    return crash


class _Run:
    prefix = "sub-01_ses-2"


def test_crash_lines_name_the_run_and_the_error(tmp_path):
    folder = tmp_path / "crash"
    _crash_file(folder, "bids_qsm_wf.sub_01_wf.qsm_sub_01_ses_2_wf.mask",
                ["RuntimeError: otsu mask is empty: no signal in the magnitude"])  # fmt:skip
    _crash_file(folder, "bids_qsm_wf.sub_01_wf.qsm_sub_01_ses_2_wf.phase_units",
                ["bids_qsm.interfaces.nifti.InputDataError: /d/x.nii.gz: every voxel is 0 (no "
                 "signal)"])  # fmt:skip
    _crash_file(folder, "bids_qsm_wf.sub_01_wf.qsm_sub_01_ses_2_wf.unwrap",
                ["OSError: [Errno 28] No space left on device"])  # fmt:skip
    mask, phase, unwrap = cli._crash_summaries(folder, [_Run()])
    assert mask.startswith("sub-01_ses-2: mask failed: RuntimeError: otsu mask is empty")
    assert phase == "/d/x.nii.gz: every voxel is 0 (no signal) (sub-01_ses-2 is not processed)"
    assert "No space left on device; free some, or put OUTPUT_DIR and --work-dir" in unwrap


def test_brain_mask_that_ends_up_empty_fails_its_run(tmp_path):
    from bids_qsm.interfaces.fieldmap import BrainMask

    magnitude = _image(tmp_path, np.ones((6, 5, 4, 2)), "magnitude.nii")
    mask = _image(tmp_path, np.zeros((6, 5, 4)), "mask.nii")
    with pytest.raises(RuntimeError, match="the mask is empty"):
        BrainMask(magnitude=str(magnitude), mask_file=str(mask)).run(cwd=str(tmp_path))


# --- selection: exit 18 -----------------------------------------------------------------------


def test_participant_that_does_not_exist_exits_18(ds, tmp_path, capsys):
    add_run(ds)
    code, lines = _main(tmp_path, ds, "--participant-label", "07", capsys=capsys)
    assert code == 18
    assert lines == [f"bids_qsm: error: participant(s) not found in {ds}: sub-07"]


def test_filter_that_selects_nothing_exits_18(ds, tmp_path, capsys):
    add_run(ds, acq="fast")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"acquisition": "slow"}))
    code, lines = _main(tmp_path, ds, "--bids-filter-file", str(filters), capsys=capsys)
    assert code == 18
    assert len(lines) == 1 and "no MEGRE runs found for sub-01 with the BIDS filters" in lines[0]


def test_session_that_does_not_exist_exits_18(ds, tmp_path, capsys):
    add_run(ds, session="1")
    code, lines = _main(tmp_path, ds, "--session-label", "9", capsys=capsys)
    assert code == 18 and "ses-9" in lines[0]


def _findings(*items):
    from bids_qsm.validation import Finding

    return lambda bids_dir: [Finding(code, location, "") for code, location in items]


def test_validation_errors_in_a_subjects_files_leave_only_that_subject_out(
    ds, tmp_path, capsys, monkeypatch
):
    broken = add_run(ds, "01")
    add_run(ds, "02")
    broken[("1", "phase")].write_bytes(b"")  # sub-01 refused at ingest: nothing is processed
    bad = "/sub-02/anat/sub-02_echo-1_part-mag_MEGRE.nii.gz"
    findings = _findings(("EMPTY_FILE", bad), ("PARTICIPANT_ID_MISMATCH", "/participants.tsv"))
    monkeypatch.setattr("bids_qsm.validation.validate", findings)
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 16
    assert (
        f"bids_qsm: error: BIDS validation: {ds}{bad}: EMPTY_FILE (sub-02 is not processed)"
        in lines
    )
    assert any(str(broken[("1", "phase")]) in line for line in lines)  # sub-01 was still read
    assert not any("is not valid BIDS" in line for line in lines)


def test_validation_errors_in_the_datasets_own_files_stop_with_16(ds, tmp_path, capsys,
                                                                   monkeypatch):  # fmt:skip
    add_run(ds, "01")
    findings = _findings(("MISSING_DATASET_DESCRIPTION", "/dataset_description.json"))
    monkeypatch.setattr("bids_qsm.validation.validate", findings)
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 16 and f"{ds} is not valid BIDS" in err
    assert not (tmp_path / "out").exists()


# --- output and work folders: exit 2 (command line) or 1 ---------------------------------------


def test_output_inside_the_input_dataset_exits_2(ds, capsys):
    add_run(ds)
    code = main([str(ds), str(ds / "sub-01" / "out"), "participant", "--skip-bids-validation"])
    assert code == 2
    assert "output_dir must not be the BIDS dataset itself" in capsys.readouterr().err


def test_work_dir_inside_the_input_dataset_exits_2(ds, tmp_path, capsys):
    add_run(ds)
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(ds / "work"),
                 "--skip-bids-validation"])  # fmt:skip
    assert code == 2
    assert "--work-dir must not be inside the BIDS dataset" in capsys.readouterr().err


def test_unwritable_output_dir_exits_1_in_one_line(ds, tmp_path, capsys):
    add_run(ds)
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder below a file cannot be made, not even by root
    code = main([str(ds), str(blocker / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])  # fmt:skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"bids_qsm: error: cannot write to OUTPUT_DIR {blocker / 'out'}: " in err


def test_unwritable_work_dir_exits_1_in_one_line(ds, tmp_path, capsys):
    add_run(ds)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(blocker / "w"),
                 "--skip-bids-validation"])  # fmt:skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "cannot write to the work directory (--work-dir)" in err


def _full(monkeypatch, folder, free):
    """shutil.disk_usage that finds `free` bytes on `folder` and below, the truth elsewhere."""
    import shutil

    real = shutil.disk_usage

    def usage(path):
        full = Path(path) == folder or folder in Path(path).parents
        return type("Usage", (), {"free": free})() if full else real(path)

    monkeypatch.setattr(shutil, "disk_usage", usage)


def test_full_disk_exits_1_in_one_line(ds, tmp_path, capsys, monkeypatch):
    add_run(ds)
    _full(monkeypatch, tmp_path / "work", 1000)
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 1
    assert len(lines) == 1 and "has 0 MB free, a run needs at least" in lines[0]
    assert not (tmp_path / "out" / "sub-01").exists()


def test_no_space_while_writing_is_one_line(ds, tmp_path, capsys, monkeypatch):
    add_run(ds)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x.json"))

    monkeypatch.setattr("bids_qsm.derivatives.init_derivatives", full)
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 1
    assert lines == [f"bids_qsm: error: no space left on the device writing "
                     f"{tmp_path / 'out' / 'x.json'}; free some, or point OUTPUT_DIR, --work-dir "
                     "and TMPDIR to a disk with space"]  # fmt:skip


def test_unforeseen_error_is_one_line_without_traceback(ds, tmp_path, capsys, monkeypatch):
    add_run(ds)

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr("bids_qsm.bids.collect_runs", broken)
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 1
    assert lines == ["bids_qsm: error: unexpected KeyError: 'surprise' (rerun with -vv for "
                     "details, and report it)"]  # fmt:skip


# --- the environment: exit 1, one line naming the variable -------------------------------------


def _environment_line(env, code_text):
    """stderr of a fresh interpreter (the environment is read at import) running `code_text`."""
    result = subprocess.run(
        [sys.executable, "-c", code_text], env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120,
    )  # fmt:skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_unwritable_numba_cache_fails_the_command_in_one_line(ds, tmp_path):
    add_run(ds)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [str(ds), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    result = _environment_line(
        {"NUMBA_CACHE_DIR": str(blocker / "numba")},
        f"import sys; from bids_qsm.cli.run import main; sys.exit(main({argv!r}))",
    )
    assert result.returncode == 1
    assert f"cannot write to {blocker / 'numba'} (NUMBA_CACHE_DIR:" in result.stderr
    assert "set NUMBA_CACHE_DIR, or BIDS_QSM_CACHE for all caches" in result.stderr


def test_unwritable_cache_fails_the_command_in_one_line(ds, tmp_path, capsys, monkeypatch):
    add_run(ds)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("MPLCONFIGDIR", str(blocker / "mpl"))
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 1
    assert len(lines) == 1 and "(MPLCONFIGDIR: " in lines[0] and "set MPLCONFIGDIR" in lines[0]


def test_full_tmpdir_names_the_variable(ds, tmp_path, capsys, monkeypatch):
    import tempfile

    add_run(ds)
    _full(monkeypatch, Path(tempfile.gettempdir()), 0)
    code, lines = _main(tmp_path, ds, capsys=capsys)
    assert code == 1
    assert len(lines) == 1 and "has 0 MB free; set TMPDIR to a folder with" in lines[0]


def test_long_tmpdir_gets_a_short_socket_folder(tmp_path):
    long_tmp = tmp_path / ("cluster-scratch-" * 6) / "job-1234567" / "tmp"
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 100
    code_text = (
        "import concurrent.futures as f, multiprocessing as mp\n"
        "from bids_qsm._environment import short_socket_folder\n"
        "folder = short_socket_folder()\n"
        "ctx = mp.get_context('forkserver')\n"
        "with f.ProcessPoolExecutor(1, mp_context=ctx) as pool:\n"
        "    print(folder, pool.submit(abs, -3).result())\n"
    )
    result = _environment_line({"TMPDIR": str(long_tmp)}, code_text)
    assert result.returncode == 0, result.stderr
    folder, answer = result.stdout.split()
    assert answer == "3" and len(folder) < 60 and not Path(folder).exists()  # removed at exit


# --- docs/errors.md lists exactly these --------------------------------------------------------


def test_every_row_of_the_errors_table_names_a_test_that_exists():
    text = DOCS.read_text()
    named = set(re.findall(r"`(test_\w+)`", text))
    assert len(named) >= 15
    sources = "".join(p.read_text() for p in DOCS.parents[1].glob("tests/test_*.py"))
    defined = set(re.findall(r"^def (test_\w+)", sources, re.M))
    assert named <= defined, named - defined
