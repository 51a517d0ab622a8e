"""MultiProc runs no more nodes at once than --mem holds, by their mem_gb estimates."""

from nipype import Node, Workflow
from nipype.interfaces.utility import Function

from bids_qsm.cli.multiproc import MultiProc
from bids_qsm.config import Nipype
from bids_qsm.workflows.qsm import estimate_mem_gb


def _span(index):
    import time

    start = time.time()
    time.sleep(1.0)
    return (start, time.time())


def _overlap(spans):
    """The most spans that cover one instant."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = running = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _run(tmp_path, memory_gb):
    workflow = Workflow(name="memory", base_dir=str(tmp_path / str(memory_gb)))
    for i in range(4):
        node = Node(Function(function=_span, input_names=["index"], output_names=["span"]),
                    name=f"step{i}", mem_gb=0.6)  # fmt:skip
        node.inputs.index = i
        workflow.add_nodes([node])
    settings = Nipype(nprocs=4, mem_gb=memory_gb).plugin_settings()
    graph = workflow.run(plugin=MultiProc(plugin_args=settings["plugin_args"]))
    return [node.result.outputs.span for node in graph.nodes()]


def test_multiproc_runs_what_the_memory_holds(tmp_path):
    assert _overlap(_run(tmp_path, 1.0)) == 1  # 0.6 GB each: one at a time in 1 GB
    assert _overlap(_run(tmp_path, 2.0)) in (2, 3)  # three fit in 2 GB (two cores may lag)


def test_estimates_grow_with_the_grid_and_the_echoes():
    small, large = estimate_mem_gb(96 * 112 * 80, 5), estimate_mem_gb(192 * 224 * 160, 5)
    more_echoes = estimate_mem_gb(192 * 224 * 160, 8)
    for stage, gb in small.items():
        assert 0.1 < gb < large[stage] <= more_echoes[stage] < 4
    # measured alone at 1 mm, five echoes (docs/hpc.md; LBV and TFI, the default methods):
    # what the estimates must cover
    measured = {"phase_units": 0.626, "unwrap": 0.741, "combine": 0.629, "invert": 0.778,
                "background": 0.372, "swi": 0.522}  # fmt:skip
    for stage, gb in measured.items():
        assert gb <= large[stage] <= 1.3 * gb, stage


def test_slurm_jobs_ask_for_the_estimates_unless_the_user_set_them():
    from bids_qsm.cli.run import _request_resources

    def graph():
        workflow = Workflow(name="jobs")
        node = Node(Function(function=_span, input_names=["index"], output_names=["span"]),
                    name="step", mem_gb=1.5, n_procs=3)  # fmt:skip
        workflow.add_nodes([node])
        return workflow, node

    workflow, node = graph()
    _request_resources(workflow, "-p short")
    assert node.plugin_args == {"sbatch_args": " --mem=1536M --cpus-per-task=3", "overwrite": False}
    workflow, node = graph()
    _request_resources(workflow, "-p big --mem=64G -c 8")
    assert node.plugin_args == {}
