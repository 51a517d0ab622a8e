"""collect_runs on tiny synthetic BIDS datasets and on the real Siemens phantom scan."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from bids_layouts import AFFINE, add_run, edit_sidecar, make_dataset, sidecar_of, write_json

from bids_qsm.bids import (
    Echo,
    InputProblem,
    MegreRun,
    SelectionError,
    collect_runs,
    load_bids_filters,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def ds(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds")


def only_problem(problems: list[InputProblem]) -> InputProblem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_three_echo_run(ds):
    files = add_run(ds, echo_times=(0.004, 0.008, 0.012))
    runs, problems = collect_runs(ds)
    assert problems == []
    (run,) = runs
    assert isinstance(run, MegreRun)
    assert (run.subject, run.session, run.entities, run.suffix) == ("01", None, {}, "MEGRE")
    assert run.echo_times == (0.004, 0.008, 0.012)
    assert run.field_strength == 3.0
    assert run.phase_units == "rad"
    assert run.echoes[0] == Echo(0.004, files[("1", "mag")], files[("1", "phase")])
    assert [e.phase for e in run.echoes] == [files[(str(i), "phase")] for i in (1, 2, 3)]
    assert run.prefix == "sub-01"


def test_prefix_and_sources_follow_bids_entity_order(ds):
    add_run(ds, session="02", acq="x", rec="y", run="01", echo_times=(0.005, 0.01))
    (run,), _ = collect_runs(ds)
    assert run.entities == {"acq": "x", "rec": "y", "run": "01"}
    assert run.prefix == "sub-01_ses-02_acq-x_rec-y_run-01"
    stem = "bids:raw:sub-01/ses-02/anat/sub-01_ses-02_acq-x_rec-y_run-01"
    assert run.sources == [
        f"{stem}_echo-1_part-mag_MEGRE.nii.gz",
        f"{stem}_echo-1_part-phase_MEGRE.nii.gz",
        f"{stem}_echo-2_part-mag_MEGRE.nii.gz",
        f"{stem}_echo-2_part-phase_MEGRE.nii.gz",
    ]


def test_two_sessions_and_session_filter(ds):
    add_run(ds, session="a")
    add_run(ds, session="b")
    runs, _ = collect_runs(ds)
    assert [r.session for r in runs] == ["a", "b"]
    runs, _ = collect_runs(ds, session_label=["ses-b"])
    assert [r.prefix for r in runs] == ["sub-01_ses-b"]
    with pytest.raises(SelectionError, match="no MEGRE runs found for sub-01 .*ses-c"):
        collect_runs(ds, session_label=["c"])


def test_acq_and_run_entities_make_separate_runs(ds):
    add_run(ds, acq="fast", run="1")
    add_run(ds, acq="fast", run="2")
    add_run(ds, acq="slow", echo_times=(0.01, 0.02))
    runs, problems = collect_runs(ds)
    assert problems == []
    assert [r.prefix for r in runs] == [
        "sub-01_acq-fast_run-1",
        "sub-01_acq-fast_run-2",
        "sub-01_acq-slow",
    ]
    assert [len(r.echoes) for r in runs] == [3, 3, 2]


def test_echoes_are_ordered_by_echo_time_not_label_text(ds):
    files = add_run(ds, echo_times=tuple(0.002 * n for n in range(1, 11)))
    (run,), _ = collect_runs(ds)
    assert run.echo_times == tuple(sorted(run.echo_times))
    assert [e.magnitude for e in run.echoes] == [files[(str(n), "mag")] for n in range(1, 11)]


def test_echo_numbers_out_of_echo_time_order_are_refused(ds):
    files = add_run(ds, echo_times=(0.004, 0.012, 0.008))
    runs, problems = collect_runs(ds)
    assert runs == []
    problem = only_problem(problems)
    assert problem.path == sidecar_of(files[("3", "mag")])
    assert "EchoTime 0.008 s of echo 3 is earlier than 0.012 s of echo 2" in problem.message


@pytest.mark.parametrize("label", [["02"], ["sub-02"], "sub-02"])
def test_participant_label_with_or_without_prefix(ds, label):
    add_run(ds, "01")
    add_run(ds, "02")
    runs, _ = collect_runs(ds, participant_label=label)
    assert [r.subject for r in runs] == ["02"]


def test_nonexistent_participant_is_a_selection_error(ds):
    add_run(ds, "01")
    with pytest.raises(SelectionError, match=r"not found .*: sub-07, sub-08$"):
        collect_runs(ds, participant_label=["01", "sub-07", "08"])


def test_no_megre_is_a_selection_error(ds):
    add_run(ds, suffix="T2w", parts=("mag",), echo_times=(0.1,), echo_labels=[None])
    with pytest.raises(SelectionError, match="no MEGRE runs found for sub-01"):
        collect_runs(ds)


def test_bids_filter_file(ds, tmp_path):
    add_run(ds, acq="fast")
    add_run(ds, acq="slow")
    add_run(ds)
    filter_file = write_json(tmp_path / "f.json", {"megre": {"acq": "slow"}, "t1w": {"x": 1}})
    filters = load_bids_filters(filter_file)
    assert filters == {"acquisition": "slow"}
    runs, _ = collect_runs(ds, bids_filters=filters)
    assert [r.prefix for r in runs] == ["sub-01_acq-slow"]
    # null: the entity must be absent; "*": any label
    runs, _ = collect_runs(ds, bids_filters={"acquisition": None})
    assert [r.prefix for r in runs] == ["sub-01"]
    runs, _ = collect_runs(ds, bids_filters={"acquisition": "*"})
    assert [r.prefix for r in runs] == ["sub-01_acq-fast", "sub-01_acq-slow"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot read the BIDS filter file"),
        ('{"megre": {"part": "mag"}}', '"part" is not allowed'),
        ('{"acquisitoin": "x"}', '"acquisitoin" is not a BIDS entity'),
        ('{"suffix": "T1w"}', '"suffix" must select MEGRE or T2starw'),
        ("[1]", "must be a JSON object"),
        ('{"run": ["*", 1]}', '"*" cannot be part of a list'),
        ('{"acq": {"x": 1}}', "must be a label, a list of labels or null"),
    ],
)
def test_bad_bids_filter_file(tmp_path, content, match):
    path = tmp_path / "f.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_bids_filters(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_phase(ds):
    files = add_run(ds)
    files[("3", "phase")].unlink()
    runs, problems = collect_runs(ds)
    assert runs == []
    problem = only_problem(problems)
    assert problem.path == files[("3", "mag")] and problem.subject == "01"
    assert str(problem) == f"{files[('3', 'mag')]}: no phase image (part-phase) for echo 3"


def test_missing_magnitude(ds):
    files = add_run(ds)
    files[("2", "mag")].unlink()
    _, problems = collect_runs(ds)
    assert str(only_problem(problems)).endswith("no magnitude image (part-mag) for echo 2")


def test_missing_echo_time_names_the_sidecar(ds):
    files = add_run(ds)
    edit_sidecar(files[("2", "mag")], drop=["EchoTime"])
    edit_sidecar(files[("2", "phase")], drop=["EchoTime"])
    _, problems = collect_runs(ds)
    problem = only_problem(problems)
    assert problem.path == sidecar_of(files[("2", "mag")])
    assert problem.message == "no EchoTime in the sidecar (echo 2)"


def test_missing_sidecar_names_the_nifti(ds):
    files = add_run(ds)
    sidecar_of(files[("1", "mag")]).unlink()
    _, problems = collect_runs(ds)
    assert str(problems[0]) == f"{files[('1', 'mag')]}: no JSON sidecar with EchoTime (echo 1)"


@pytest.mark.parametrize(
    ("echo_times", "match"),
    [
        ((0.004, -0.008), "EchoTime -0.008 s is not positive"),
        ((0.004, 0.004), "EchoTime 0.004 s of echo 2 repeats that of sub-01_echo-1_part-mag"),
        ((4.0, 8.0), "EchoTime 4.0 looks like milliseconds"),
    ],
)
def test_bad_echo_times(ds, echo_times, match):
    add_run(ds, echo_times=echo_times)
    runs, problems = collect_runs(ds)
    assert runs == []
    assert match in str(problems[0])


def test_magnitude_and_phase_echo_times_must_agree(ds):
    files = add_run(ds)
    edit_sidecar(files[("2", "phase")], EchoTime=0.009)
    _, problems = collect_runs(ds)
    assert "EchoTime 0.009 s differs from 0.008 s" in str(only_problem(problems))


def test_missing_field_strength(ds):
    files = add_run(ds, field_strength=None)
    runs, problems = collect_runs(ds)
    assert runs == []
    problem = problems[0]
    assert problem.path == sidecar_of(files[("1", "mag")])
    assert problem.message == "no MagneticFieldStrength (tesla) in the sidecars"


def test_field_strength_inherited_from_top_level_sidecar(ds):
    add_run(ds, field_strength=None, units=None)
    write_json(ds / "MEGRE.json", {"MagneticFieldStrength": 7})
    (run,), problems = collect_runs(ds)
    assert problems == [] and run.field_strength == 7.0
    assert run.phase_units == "missing"  # no Units: not a problem, the workflow decides


def test_arbitrary_and_bad_phase_units(ds):
    add_run(ds, units="arbitrary")
    (run,), _ = collect_runs(ds)
    assert run.phase_units == "arbitrary"
    add_run(ds, "02", units="deg")
    _, problems = collect_runs(ds, participant_label=["02"])
    assert "phase Units 'deg' not understood" in str(problems[0])


def test_shape_mismatch(ds):
    files = add_run(ds)
    add_run(ds, echo_times=(0.012,), echo_labels=["3"], shape=(8, 8, 5))
    _, problems = collect_runs(ds)
    assert [p.path for p in problems] == [files[("3", "mag")], files[("3", "phase")]]
    assert "shape (8, 8, 5) differs from (8, 8, 4) of sub-01_echo-1_part-mag" in problems[0].message


def test_affine_mismatch_between_parts(ds):
    files = add_run(ds)
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.01
    add_run(ds, echo_times=(0.008,), echo_labels=["2"], parts=("phase",), affine=shifted)
    _, problems = collect_runs(ds)
    problem = only_problem(problems)
    assert problem.path == files[("2", "phase")]
    assert "affine differs" in problem.message


def test_affine_within_tolerance_is_accepted(ds):
    add_run(ds)
    nearly = AFFINE.copy()
    nearly[0, 3] = 2e-5
    add_run(ds, echo_times=(0.008,), echo_labels=["2"], parts=("phase",), affine=nearly)
    runs, problems = collect_runs(ds)
    assert len(runs) == 1 and problems == []


def test_four_d_image(ds):
    files = add_run(ds)
    add_run(ds, echo_times=(0.004,), echo_labels=["1"], parts=("phase",), shape=(8, 8, 4, 2))
    _, problems = collect_runs(ds)
    assert only_problem(problems).path == files[("1", "phase")]
    assert "expected a 3-D image, found shape (8, 8, 4, 2)" in problems[0].message


@pytest.mark.parametrize("damage", ["garbage", "truncated_gz", "truncated_nii"])
def test_corrupt_nifti(ds, damage):
    files = add_run(ds, extension=".nii" if damage == "truncated_nii" else ".nii.gz")
    bad = files[("2", "phase")]
    if damage == "garbage":
        bad.write_bytes(b"not a nifti file at all")
    elif damage == "truncated_gz":
        data = gzip.decompress(bad.read_bytes())
        bad.write_bytes(gzip.compress(data)[:-40])
    else:
        bad.write_bytes(bad.read_bytes()[:-16])
    runs, problems = collect_runs(ds)
    assert runs == []
    problem = only_problem(problems)
    assert problem.path == bad
    assert problem.message.startswith("cannot read NIfTI: ") and "\n" not in problem.message


def test_multi_member_gzip_is_not_corrupt(ds):
    files = add_run(ds)
    path = files[("1", "mag")]
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:100]) + gzip.compress(data[100:]))
    runs, problems = collect_runs(ds)
    assert len(runs) == 1 and problems == []


def test_invalid_json_sidecar_is_reported_not_fatal(ds):
    files = add_run(ds, "01")
    add_run(ds, "02")
    sidecar_of(files[("1", "mag")]).write_text('{"EchoTime": 0.004,')
    runs, problems = collect_runs(ds)
    assert [r.subject for r in runs] == ["02"]
    assert problems[0].path == sidecar_of(files[("1", "mag")])
    assert problems[0].message.startswith("invalid JSON: ")


def test_problems_do_not_stop_other_subjects(ds):
    files = add_run(ds, "01")
    add_run(ds, "02")
    add_run(ds, "03", field_strength=None)
    files[("1", "phase")].unlink()
    runs, problems = collect_runs(ds)
    assert [r.subject for r in runs] == ["02"]
    assert sorted({p.subject for p in problems}) == ["01", "03"]


def test_derivatives_and_other_folders_are_ignored(ds):
    add_run(ds)
    for folder in ("derivatives/qsm", "sourcedata", "code"):
        add_run(ds / folder, "01")
        add_run(ds / folder, "99")
    runs, problems = collect_runs(ds)
    assert problems == [] and [r.subject for r in runs] == ["01"]
    assert all("derivatives" not in s for s in runs[0].sources)


def test_unselected_subjects_and_other_folders_are_not_read(ds):
    add_run(ds, "01")
    broken = add_run(ds, "02")
    sidecar_of(broken[("1", "mag")]).write_text("{")
    add_run(ds / "work", "01")  # e.g. a work directory left inside the dataset
    runs, problems = collect_runs(ds, participant_label=["01"])
    assert problems == [] and [r.subject for r in runs] == ["01"]
    assert all("/work/" not in s for s in runs[0].sources)


def test_subject_filter_selects_participants(ds):
    add_run(ds, "01")
    add_run(ds, "02")
    runs, _ = collect_runs(ds, bids_filters={"subject": ["sub-02"]})
    assert [r.subject for r in runs] == ["02"]
    runs, _ = collect_runs(ds, participant_label=["01"], bids_filters={"subject": "02"})
    assert [r.subject for r in runs] == ["01"]  # the command line wins


def test_field_strength_must_agree_between_echoes(ds):
    files = add_run(ds)
    edit_sidecar(files[("3", "phase")], MagneticFieldStrength=1.5)
    _, problems = collect_runs(ds)
    assert "MagneticFieldStrength 1.5 T differs from 3.0 T of" in str(only_problem(problems))


def test_megre_without_part_is_the_magnitude(ds):
    files = add_run(ds, parts=("phase",))
    mag = add_run(ds, parts=("",), echo_times=(0.004, 0.008, 0.012))
    (run,), problems = collect_runs(ds)
    assert problems == []
    assert [e.magnitude for e in run.echoes] == [mag[(k, "")] for k in ("1", "2", "3")]
    assert [e.phase for e in run.echoes] == [files[(k, "phase")] for k in ("1", "2", "3")]


def test_same_output_name_is_reported(ds):
    add_run(ds)
    add_run(ds, suffix="T2starw", echo_times=(0.02,), echo_labels=[None])
    runs, problems = collect_runs(ds)
    assert [r.suffix for r in runs] == ["MEGRE"]
    assert "same output name sub-01 as the MEGRE run" in str(only_problem(problems))


def test_single_echo_t2starw(ds):
    add_run(ds, suffix="T2starw", echo_times=(0.02,), echo_labels=[None])
    add_run(ds, "02", suffix="T2starw", echo_times=(0.02,), parts=("mag",), echo_labels=[None])
    (run,), problems = collect_runs(ds)
    assert (run.suffix, run.echo_times, run.prefix) == ("T2starw", (0.02,), "sub-01")
    assert "no phase image (part-phase) for the echo" in str(only_problem(problems))


def test_plain_t2starw_without_part_is_not_an_input(ds):
    add_run(ds)
    add_run(ds, "01", acq="t2s", suffix="T2starw", echo_times=(0.02,), echo_labels=[None], parts=())
    from bids_layouts import write_nifti

    write_nifti(ds / "sub-01" / "anat" / "sub-01_acq-t2s_T2starw.nii.gz")
    runs, problems = collect_runs(ds)
    assert problems == [] and [r.suffix for r in runs] == ["MEGRE"]


def test_real_imag_pair(ds):
    files = add_run(ds, parts=("real", "imag"), units=None, echo_times=(0.005, 0.01))
    (run,), problems = collect_runs(ds)
    assert problems == []
    assert run.echoes[1] == Echo(0.01, None, None, files[("2", "real")], files[("2", "imag")])
    assert run.phase_units == "rad"  # the phase will be angle(real + i imag)
    assert len(run.sources) == 4


def test_real_without_imag(ds):
    files = add_run(ds, parts=("real", "imag"))
    files[("1", "imag")].unlink()
    _, problems = collect_runs(ds)
    problem = only_problem(problems)
    assert problem.path == files[("1", "real")]
    assert problem.message == "no imaginary image (part-imag) for echo 1"


def test_echo_given_only_as_real_imag_in_a_mag_phase_run(ds):
    add_run(ds, echo_times=(0.004, 0.008))
    odd = add_run(ds, echo_times=(0.012,), echo_labels=["3"], parts=("real", "imag"))
    _, problems = collect_runs(ds)
    assert str(only_problem(problems)) == (
        f"{odd[('3', 'imag')]}: no part-mag/part-phase images for echo 3"
    )


def test_duplicate_files_for_one_echo(ds):
    add_run(ds)
    add_run(ds, echo_times=(0.004,), extension=".nii")
    _, problems = collect_runs(ds)
    assert any("second part-mag image for echo 1" in str(p) for p in problems)


def test_database_dir_is_created_reused_and_refreshed(ds, tmp_path):
    files = add_run(ds)
    db = tmp_path / "work" / "bids_db"
    runs, _ = collect_runs(ds, database_dir=db)
    (index,) = db.glob("*/layout_index.sqlite")
    built = index.stat().st_mtime_ns
    again, _ = collect_runs(ds, database_dir=db)
    assert again == runs and index.stat().st_mtime_ns == built  # reused, not rebuilt
    # a fixed sidecar must be seen on the next run, not the cached metadata
    edit_sidecar(files[("1", "mag")], EchoTime=0.002)
    edit_sidecar(files[("1", "phase")], EchoTime=0.002)
    (run,), _ = collect_runs(ds, database_dir=db)
    assert run.echo_times[0] == 0.002
    # another subject selection gets its own index
    add_run(ds, "02")
    runs, _ = collect_runs(ds, participant_label=["02"], database_dir=db)
    assert [r.subject for r in runs] == ["02"] and len(list(db.glob("*/layout_index.sqlite"))) == 2


def test_siemens_phantom():
    root = DATA / "siemens_phantom_6echo"
    if not root.is_dir():
        pytest.skip("real data not available")
    runs, problems = collect_runs(root, participant_label=["phantom"])
    assert problems == []
    (run,) = runs
    assert run.prefix == "sub-phantom" and run.suffix == "MEGRE"
    assert np.allclose(run.echo_times, np.arange(6) * 0.003 + 0.0025)
    assert abs(run.field_strength - 3) < 0.1
    assert run.phase_units == "arbitrary"
    assert all(e.magnitude.name.endswith("part-mag_MEGRE.nii.gz") for e in run.echoes)
    assert all(e.phase.name.endswith("part-phase_MEGRE.nii.gz") for e in run.echoes)
    assert json.dumps(run.sources)  # plain strings, ready for a sidecar
