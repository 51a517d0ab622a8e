"""Workflows are built (not run) across the method choices; nodes carry the chosen options."""

import itertools

import pytest

from bids_qsm.cli.parser import _stage_choices
from bids_qsm.data import load_json
from bids_qsm.workflows.qsm import (
    estimate_mem_gb,
    init_fieldmap_wf,
    init_inversion_wf,
    init_qsm_wf,
    init_readouts_wf,
    init_run_outputs_wf,
    init_swi_wf,
)

MEM = estimate_mem_gb(64**3, 3)
CHOICES = _stage_choices()

# stage keyword of init_qsm_wf -> (its node, the parser's choice list, its citations section)
STAGES = {
    "mask_method": ("fieldmap_wf.mask", "mask_method", "mask"),
    "unwrap_method": ("fieldmap_wf.unwrap", "unwrap_method", "unwrap"),
    "combine_method": ("fieldmap_wf.combine", "combine_method", "combine"),
    "relaxometry_method": ("fieldmap_wf.relaxometry", "r2star_method", "relaxometry"),
    "background_method": ("inversion_wf.background", "background_method", "background"),
    "inversion_method": ("inversion_wf.invert", "inversion_method", "inversion"),
    "reference": ("inversion_wf.reference", "reference", "reference"),
}


@pytest.mark.parametrize(
    ("keyword", "choice"),
    [(kw, c) for kw, (_, key, _) in STAGES.items() for c in CHOICES[key]],
)
def test_every_choice_reaches_its_node_and_the_methods_text(keyword, choice):
    node_name, _, section = STAGES[keyword]
    workflow = init_qsm_wf(echo_times=(0.004, 0.008, 0.012), mem_gb=MEM, **{keyword: choice})
    assert workflow.get_node(node_name).inputs.method == choice
    assert load_json("citations.json")[section][choice][0] in workflow.visit_desc()


def test_phase_options_and_resources_reach_nodes():
    workflow = init_qsm_wf(
        echo_times=(0.005,), mem_gb=MEM, omp_nthreads=3, phase_units="arbitrary",
        sidecar_units="rad", phase_sign=-1,
    )  # fmt:skip
    loader = workflow.get_node("fieldmap_wf.phase_units")
    assert (loader.inputs.units, loader.inputs.sidecar_units, loader.inputs.sign) == (
        "arbitrary",
        "rad",
        -1,
    )
    invert = workflow.get_node("inversion_wf.invert")
    assert invert.n_procs == 3 and invert.inputs.omp_nthreads == 3
    assert invert.mem_gb == pytest.approx(MEM["invert"])
    assert "5 ms" in workflow.visit_desc()


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
        graph = workflow._create_flat_graph()  # nodes of the sub-workflows, connected
        assert {n.name for n in graph.nodes} >= {"phase_units", "mask", "unwrap", "invert"}
        assert not any(n.name in ("foci", "veins", "lesions") for n in graph.nodes)


def test_memory_estimate_of_a_clinical_protocol_stays_well_under_16_gb():
    mem = estimate_mem_gb(480 * 480 * 68, 7)
    assert max(mem.values()) < 8
    assert mem["unwrap"] > mem["reference"]


def _node_names(workflow):
    return {node.name for node in workflow._create_flat_graph().nodes}


@pytest.mark.parametrize(
    ("factory", "kwargs", "nodes"),
    [
        (init_fieldmap_wf, {"echo_times": (0.004, 0.008)},
         {"phase_units", "mask", "unwrap", "combine", "relaxometry"}),
        (init_fieldmap_wf, {"echo_times": (0.004,)}, {"phase_units", "mask", "unwrap", "combine"}),
        (init_inversion_wf, {"reference": "labels", "reference_labels": (4, 43)},
         {"background", "invert", "reference"}),
        (init_swi_wf, {}, {"swi"}),
        (init_run_outputs_wf, {}, {"figures", "sidecars"}),
        (init_readouts_wf, {"foci": True, "veins": True, "lesions": True},
         {"foci", "veins", "lesions", "figures"}),
    ],
)  # fmt: skip
def test_each_stage_family_builds_alone(factory, kwargs, nodes):
    workflow = factory(mem_gb=MEM, **kwargs)
    assert {"inputnode", "outputnode"} <= {n.name for n in workflow._get_all_nodes()}
    assert nodes <= _node_names(workflow)
    if "echo_times" in kwargs and len(kwargs["echo_times"]) == 1:
        assert "relaxometry" not in _node_names(workflow)


@pytest.mark.parametrize(
    ("foci", "veins", "lesions"), list(itertools.product([True, False], repeat=3))
)
def test_readouts_reach_their_nodes_and_the_methods_text(foci, veins, lesions):
    workflow = init_qsm_wf(
        echo_times=(0.004, 0.008), mem_gb=MEM, foci=foci, veins=veins, lesions=lesions,
        hct=0.42, csf_labels=(24,), white_matter_labels=(2, 41),
        parameters={"lesions": {"rim_mm": 1.5}, "foci": {"min_contrast_ppm": 0.3}},
    )  # fmt: skip
    names = _node_names(workflow)
    for flag, node in ((foci, "foci"), (veins, "veins"), (lesions, "lesions")):
        assert (node in names) == flag
    cites = load_json("citations.json")
    text = workflow.visit_desc()
    assert text.count("The phase of 2 echoes") == 1 and ".The" not in text and ".Focal" not in text
    if veins:
        assert workflow.get_node("readouts_wf.veins").inputs.hct == 0.42
        assert "Hct = 0.42" in text and "CSF of the segmentation" in text
    if lesions:
        assert "1.5 mm band" in text
        assert workflow.get_node("readouts_wf.lesions").inputs.white_matter_labels == [2, 41]
    if foci:
        assert workflow.get_node("readouts_wf.foci").inputs.params == {"min_contrast_ppm": 0.3}
        assert cites["foci"]["default"][0] in text


@pytest.mark.parametrize("two_pass", [False, True])
@pytest.mark.parametrize("background", ["lbv", "resharp"])
def test_lbv_tells_the_inversion_its_boundary(background, two_pass):
    """After LBV (only) the inversion is given the mask LBV took its boundary from, in each
    pass, so that TFI can give back the brain's own field that LBV removed there."""
    workflow = init_inversion_wf(mem_gb=MEM, background_method=background, two_pass=two_pass)
    pairs = [("background", "invert")] + ([("background_pass1", "invert_pass1")] * two_pass)
    for source, target in pairs:
        edge = workflow._graph.get_edge_data(workflow.get_node(source), workflow.get_node(target))
        told = ("method_mask", "lbv_mask") in edge["connect"]
        assert told == (background == "lbv")
