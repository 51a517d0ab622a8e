"""The MultiProc plugin ends a run whose worker dies instead of waiting for it forever."""

import signal

import pytest
from nipype import Node, Workflow
from nipype.interfaces.utility import Function

from bids_qsm.cli.multiproc import MultiProc


def _die():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def _give_up(signum, frame):
    raise TimeoutError("the run waited for a dead worker")


def test_a_killed_worker_fails_the_run_with_a_crash_file(tmp_path):
    workflow = Workflow(name="dies", base_dir=str(tmp_path))
    workflow.add_nodes([Node(Function(function=_die, output_names=[]), name="killed")])
    workflow.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")
    workflow.config["execution"]["crashfile_format"] = "txt"
    previous = signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(120)
    try:
        with pytest.raises(RuntimeError, match="process running this node died"):
            workflow.run(plugin=MultiProc(plugin_args={"n_procs": 1, "mp_context": "forkserver"}))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    crashes = list((tmp_path / "crash").glob("crash-*.txt"))
    assert len(crashes) == 1
    assert "ChildProcessError: the process running this node died" in crashes[0].read_text()
