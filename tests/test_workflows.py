"""Workflows are built (not run) across the method choices; nodes carry the chosen options."""

import itertools

import pytest

from bids_qsm.cli.parser import _stage_choices
from bids_qsm.data import load_json
from bids_qsm.workflows.qsm import estimate_mem_gb, init_qsm_wf

MEM = estimate_mem_gb(64**3, 3)
CHOICES = _stage_choices()

# stage keyword of init_qsm_wf -> (its node, the parser's choice list, its citations section)
STAGES = {
    "mask_method": ("mask", "mask_method", "mask"),
    "unwrap_method": ("unwrap", "unwrap_method", "unwrap"),
    "combine_method": ("combine", "combine_method", "combine"),
    "relaxometry_method": ("relaxometry", "r2star_method", "relaxometry"),
    "background_method": ("background", "background_method", "background"),
    "inversion_method": ("invert", "inversion_method", "inversion"),
    "reference": ("reference", "reference", "reference"),
}


@pytest.mark.parametrize(
    ("keyword", "choice"),
    [(kw, c) for kw, (_, key, _) in STAGES.items() for c in CHOICES[key]],
)
def test_every_choice_reaches_its_node_and_the_methods_text(keyword, choice):
    node_name, _, section = STAGES[keyword]
    workflow = init_qsm_wf(echo_times=(0.004, 0.008, 0.012), mem_gb=MEM, **{keyword: choice})
    assert workflow.get_node(node_name).inputs.method == choice
    assert load_json("citations.json")[section][choice][0] in workflow.__desc__


def test_phase_options_and_resources_reach_nodes():
    workflow = init_qsm_wf(
        echo_times=(0.005,), mem_gb=MEM, omp_nthreads=3, phase_units="arbitrary",
        sidecar_units="rad", phase_sign=-1,
    )  # fmt:skip
    loader = workflow.get_node("phase_units")
    assert (loader.inputs.units, loader.inputs.sidecar_units, loader.inputs.sign) == (
        "arbitrary",
        "rad",
        -1,
    )
    invert = workflow.get_node("invert")
    assert invert.n_procs == 3 and invert.inputs.omp_nthreads == 3
    assert invert.mem_gb == pytest.approx(MEM["invert"])
    assert "5 ms" in workflow.__desc__


def test_graph_is_connected_and_acyclic_for_a_matrix_of_choices():
    combos = itertools.islice(
        itertools.product(CHOICES["unwrap_method"], CHOICES["background_method"],
                          CHOICES["inversion_method"]),
        12,
    )  # fmt:skip
    for unwrap, background, inversion in combos:
        workflow = init_qsm_wf(
            echo_times=(0.004, 0.008), mem_gb=MEM, unwrap_method=unwrap,
            background_method=background, inversion_method=inversion,
        )  # fmt:skip
        workflow._create_flat_graph()
        graph = workflow._graph
        assert {n.name for n in graph.nodes} >= {"phase_units", "mask", "unwrap", "invert"}


def test_memory_estimate_of_a_clinical_protocol_stays_well_under_16_gb():
    mem = estimate_mem_gb(480 * 480 * 68, 7)
    assert max(mem.values()) < 8
    assert mem["unwrap"] > mem["reference"]
