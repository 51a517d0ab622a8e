"""Progress lines per finished stage, the closing summary, -q, and --plugin-args from YAML."""

import logging
import os
from types import SimpleNamespace

import pytest
from nipype import Node, Workflow
from nipype.interfaces.utility import Function

from bids_qsm.cli.parser import parse_args
from bids_qsm.cli.progress import Progress, wait_for_slurm_jobs

RUN = SimpleNamespace(prefix="sub-01_ses-1", subject="01")


def _pause(x):
    import time

    time.sleep(0.3)
    return x


def _fail(x):
    raise ValueError("no field")


def _identity(x):
    return x


def _graph(base_dir, function=_pause):
    """bids_qsm_wf > sub_01_wf > qsm_sub_01_ses_1_wf: invert -> sidecars, as base.py names."""
    qsm_wf = Workflow(name="qsm_sub_01_ses_1_wf")
    invert = Node(Function(function=function, input_names=["x"], output_names=["y"]), "invert")
    invert.inputs.x = 1
    sidecars = Node(Function(function=_identity, input_names=["x"], output_names=["y"]),
                    "sidecars")  # fmt:skip
    qsm_wf.connect(invert, "y", sidecars, "x")
    subject_wf = Workflow(name="sub_01_wf")
    subject_wf.add_nodes([qsm_wf])
    workflow = Workflow(name="bids_qsm_wf", base_dir=str(base_dir))
    workflow.add_nodes([subject_wf])
    workflow.config["execution"]["crashdump_dir"] = str(base_dir / "crash")
    return workflow


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "bids_qsm.progress"]


def test_a_line_per_finished_stage_then_reused_on_a_rerun(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bids_qsm")
    progress = Progress([RUN], verbosity=0)
    _graph(tmp_path).run(plugin="Linear", plugin_args={"status_callback": progress})
    lines = _lines(caplog)
    assert len(lines) == 1, lines  # the plumbing node (sidecars) gets no line without -v
    stage, seconds = lines[0].rsplit(", ", 1)
    assert stage == "sub-01 ses-1: dipole inversion done"
    assert 0.3 <= float(seconds.removesuffix(" s")) < 5

    caplog.clear()
    again = Progress([RUN], verbosity=1)
    _graph(tmp_path).run(plugin="Linear", plugin_args={"status_callback": again})
    assert _lines(caplog) == [
        "sub-01 ses-1: dipole inversion reused from the work directory",
        "sub-01 ses-1: sub_01_wf.qsm_sub_01_ses_1_wf.sidecars reused from the work directory",
    ]


def test_summary_counts_written_and_failed_runs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bids_qsm")
    progress = Progress([RUN], verbosity=0)
    with pytest.raises(RuntimeError):
        _graph(tmp_path, function=_fail).run(
            plugin="Linear", plugin_args={"status_callback": progress}
        )
    assert _lines(caplog) == ["sub-01 ses-1: dipole inversion failed"]
    assert progress.summary(tmp_path / "out") == ["sub-01_ses-1"]
    assert "summary: sub-01 ses-1 failed (dipole inversion); 0 file(s) written" in _lines(caplog)

    anat = tmp_path / "out" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_ses-1_Chimap.nii.gz").write_bytes(b"")
    caplog.clear()
    assert Progress([RUN]).summary(tmp_path / "out") == []
    assert _lines(caplog)[-1].startswith("summary: 1 of 1 run(s) written, 0 failed")
    # a crash line from the run (the *Graph plugins never call back) marks it failed too
    failure = "sub-01_ses-1: invert failed: ValueError: no field (details: crash.txt)"
    assert Progress([RUN]).summary(tmp_path / "out", [failure]) == ["sub-01_ses-1"]


def test_quiet_and_plugin_args_from_a_yaml_file(tmp_path):
    bids, tmp_path = tmp_path / "bids", tmp_path / "elsewhere"
    bids.mkdir()
    tmp_path.mkdir()
    plugin_args = tmp_path / "slurm.yml"
    plugin_args.write_text("sbatch_args: -p short --time=60\nmax_jobs: 20\n")
    settings, verbosity = parse_args(
        [str(bids), str(tmp_path / "out"), "participant", "-q", "--nipype-plugin",
         "SLURM", "--plugin-args", str(plugin_args)]
    )  # fmt:skip
    assert verbosity == -1
    assert settings.nipype.plugin_args == {"sbatch_args": "-p short --time=60", "max_jobs": 20}
    _, verbosity = parse_args([str(bids), str(tmp_path / "out"), "participant", "-vv"])
    assert verbosity == 2
    plugin_args.write_text("- not\n- a mapping\n")
    with pytest.raises(SystemExit):
        parse_args([str(bids), str(tmp_path / "o"), "participant", "--plugin-args",
                    str(plugin_args)])  # fmt:skip


def test_waiting_for_slurmgraph_jobs_cancels_those_that_can_never_run(tmp_path, monkeypatch):
    """With stand-ins for squeue and scancel: a job whose dependency failed is cancelled, then
    one left waiting on a dependency with nothing else of the run queued; others' jobs stay."""
    batch, bin_dir = tmp_path / "work" / "batch", tmp_path / "bin"
    bin_dir.mkdir()
    queue = tmp_path / "queue"
    queue.write_text(
        f"1|PENDING|DependencyNeverSatisfied|{batch}/a.sh\n"
        f"2|PENDING|Dependency|{batch}/b.sh\n"
        "3|RUNNING|None|/elsewhere/batch/c.sh\n"
    )
    (bin_dir / "squeue").write_text(f"#!/bin/sh\ncat {queue}\n")
    (bin_dir / "scancel").write_text(
        f'#!/bin/sh\nfor job in "$@"; do grep -v "^$job|" {queue} > {queue}.new; '
        f"mv {queue}.new {queue}; echo $job >> {tmp_path / 'cancelled'}; done\n"
    )
    for tool in ("squeue", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert wait_for_slurm_jobs(batch, poll_s=0.01, stuck_polls=3) == 2
    assert (tmp_path / "cancelled").read_text().split() == ["1", "2"]
    assert queue.read_text() == "3|RUNNING|None|/elsewhere/batch/c.sh\n"
