"""The per-run graph: one multi-echo GRE acquisition -> field -> local field -> susceptibility
-> clinical read-outs, as sub-workflows per stage family that `init_qsm_wf` joins."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_qsm.data import load_json
from bids_qsm.interfaces.fieldmap import BrainMask, FitField, LoadEchoes, R2Star, Unwrap
from bids_qsm.interfaces.inversion import (
    HollowMask,
    Invert,
    Reference,
    RemoveBackground,
    TwoPass,
)
from bids_qsm.interfaces.metadata import Sidecars
from bids_qsm.interfaces.readouts import Foci, Lesions, ReadoutFigures, Veins
from bids_qsm.interfaces.reports import RunFigures
from bids_qsm.interfaces.swi import SWI

_INPUTS = [
    "magnitude", "phase", "real", "imag", "echo_times", "field_strength", "sources", "labels",
    "lesions", "lesion_file", "lesion_names",
]  # fmt:skip
_OUTPUTS = [
    "magnitude", "brain_mask", "chimap", "mask", "r2star", "t2star", "field", "local_field",
    "swi", "minip", "figures", "figure_keys", "chimap_meta", "mask_meta", "relaxometry_meta",
    "fields_meta", "swi_meta", "foci_dseg", "foci_lookup", "foci_table", "foci_meta",
    "veins_mask", "veins_table", "veins_meta", "lesions_table", "lesions_meta",
]  # fmt:skip


def estimate_mem_gb(n_voxels, n_echoes):
    """Peak memory (GB) of each stage's node for a grid of `n_voxels` and `n_echoes` echoes.

    Each stage costs a base (the interpreter and the libraries the stage loads, 0.12-0.2 GB)
    plus a number of float32 volumes of the grid that it holds at once. The numbers are fitted
    to each node's peak resident memory, run alone in a fresh process, on five-echo phantoms
    at 2 mm, 1 mm and 0.5x0.5x2 mm (0.9, 6.9 and 13.8 M voxels; scripts/measure_memory.py,
    docs/hpc.md), with the default methods: each estimate lies within 30 % of what was
    measured, most of them 3-26 % above. "readouts" is for the foci, veins and lesion read-outs.
    "invert" is refitted for the default total field inversion (its box carries 20 mm of
    margin, hence the larger base): 0.78 GB measured alone at 1 mm (192x224x160, 5 echoes) and
    1.21 GB on the clinical protocol (480x480x68, 7 echoes).
    """
    volume = n_voxels * 4 / 1e9
    return {
        "phase_units": 0.15 + volume * 4 * n_echoes,
        "mask": 0.2 + volume * (n_echoes + 4),
        "unwrap": 0.2 + volume * (3 * n_echoes + 7),
        "combine": 0.2 + volume * (3 * n_echoes + 3),
        "relaxometry": 0.2 + volume * 2 * n_echoes,
        "background": 0.2 + volume * 10,
        "invert": 0.5 + volume * 13,
        "reference": 0.15 + volume * 4,
        "swi": 0.15 + volume * (2 * n_echoes + 5),
        "figures": 0.12 + volume * 7.5,
        "readouts": 0.15 + volume * 17,
    }


def init_qsm_wf(
    *,
    echo_times,
    mem_gb,
    omp_nthreads=1,
    phase_units="auto",
    sidecar_units="missing",
    phase_sign=1,
    mask_method="otsu",
    mask_file=None,
    unwrap_method="romeo",
    combine_method="linear",
    relaxometry_method="loglinear",
    background_method="lbv",
    inversion_method="tfi",
    two_pass=False,
    reference="mean",
    reference_labels=(),
    parameters=None,
    foci=False,
    veins=False,
    lesions=False,
    hct=0.40,
    csf_labels=(),
    white_matter_labels=(),
    name="qsm_wf",
):
    """Susceptibility, brain mask and R2*/T2* maps of one multi-echo GRE run, and its optional
    clinical read-outs: field mapping -> inversion -> SWI -> read-outs -> figures and sidecars.

    echo_times: seconds, ascending (they only shape the description; the data arrive on
    `inputnode.echo_times`); mem_gb: per-stage estimates from `estimate_mem_gb`;
    sidecar_units: the phase sidecar's `Units` ("rad", "arbitrary" or "missing");
    mask_file: the user's brain mask on the run's grid, used instead of `mask_method`;
    reference_labels: label indices of the reference region when `reference` is "labels" (the
    label image arrives on `inputnode.labels`); parameters: {stage: {parameter: value}} for the
    stages mask, unwrap, combine, relaxometry, background, inversion, two_pass, reference, swi,
    foci, veins and lesions, where the method's defaults are not wanted. two_pass: two-pass
    artefact reduction (`init_inversion_wf`). foci, veins, lesions: which
    read-outs to add (`init_readouts_wf`; the lesion labels arrive on `inputnode.lesions`);
    hct, csf_labels, white_matter_labels: as in `init_readouts_wf`.
    """
    parameters = parameters or {}
    workflow = Workflow(name=name)
    multi_echo = len(echo_times) > 1
    inputnode = pe.Node(niu.IdentityInterface(fields=_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUTS), name="outputnode")

    fieldmap_wf = init_fieldmap_wf(
        echo_times=echo_times, mem_gb=mem_gb, omp_nthreads=omp_nthreads, phase_units=phase_units,
        sidecar_units=sidecar_units, phase_sign=phase_sign, mask_method=mask_method,
        mask_file=mask_file, unwrap_method=unwrap_method, combine_method=combine_method,
        relaxometry_method=relaxometry_method, parameters=parameters,
    )  # fmt:skip
    inversion_wf = init_inversion_wf(
        mem_gb=mem_gb, omp_nthreads=omp_nthreads, background_method=background_method,
        inversion_method=inversion_method, reference=reference,
        reference_labels=reference_labels, parameters=parameters, two_pass=two_pass,
    )  # fmt:skip
    swi_wf = init_swi_wf(mem_gb=mem_gb, omp_nthreads=omp_nthreads, parameters=parameters)
    run_outputs_wf = init_run_outputs_wf(mem_gb=mem_gb, relaxometry=multi_echo)

    workflow.connect([
        (inputnode, fieldmap_wf, [
            ("magnitude", "inputnode.magnitude"), ("phase", "inputnode.phase"),
            ("real", "inputnode.real"), ("imag", "inputnode.imag"),
            ("echo_times", "inputnode.echo_times"),
        ]),
        (inputnode, inversion_wf, [
            ("echo_times", "inputnode.echo_times"), ("field_strength", "inputnode.field_strength"),
            ("labels", "inputnode.labels"),
        ]),
        (fieldmap_wf, inversion_wf, [
            ("outputnode.field", "inputnode.field"), ("outputnode.noise", "inputnode.noise"),
            ("outputnode.brain_mask", "inputnode.brain_mask"),
        ]),
        (inputnode, swi_wf, [
            ("echo_times", "inputnode.echo_times"), ("field_strength", "inputnode.field_strength"),
        ]),
        (fieldmap_wf, swi_wf, [("outputnode.magnitude", "inputnode.magnitude")]),
        (inversion_wf, swi_wf, [
            ("outputnode.local_field", "inputnode.local_field"),
            ("outputnode.mask", "inputnode.mask"),
        ]),
        (inputnode, run_outputs_wf, [
            ("sources", "inputnode.sources"), ("echo_times", "inputnode.echo_times"),
            ("field_strength", "inputnode.field_strength"),
        ]),
        (fieldmap_wf, run_outputs_wf, [
            ("outputnode.magnitude", "inputnode.magnitude"),
            ("outputnode.brain_mask", "inputnode.brain_mask"),
            ("outputnode.field", "inputnode.field"),
            ("outputnode.r2star", "inputnode.r2star"),
            ("outputnode.params", "inputnode.fieldmap_params"),
            ("outputnode.warnings", "inputnode.fieldmap_warnings"),
        ]),
        (inversion_wf, run_outputs_wf, [
            ("outputnode.local_field", "inputnode.local_field"),
            ("outputnode.mask", "inputnode.mask"),
            ("outputnode.chimap", "inputnode.chimap"),
            ("outputnode.params", "inputnode.inversion_params"),
            ("outputnode.warnings", "inputnode.inversion_warnings"),
        ]),
        (swi_wf, run_outputs_wf, [
            ("outputnode.swi", "inputnode.swi"), ("outputnode.minip", "inputnode.minip"),
            ("outputnode.params", "inputnode.swi_params"),
            ("outputnode.warnings", "inputnode.swi_warnings"),
        ]),
        (fieldmap_wf, outputnode, [
            ("outputnode.magnitude", "magnitude"), ("outputnode.brain_mask", "brain_mask"),
            ("outputnode.field", "field"), ("outputnode.r2star", "r2star"),
            ("outputnode.t2star", "t2star"),
        ]),
        (inversion_wf, outputnode, [
            ("outputnode.chimap", "chimap"), ("outputnode.mask", "mask"),
            ("outputnode.local_field", "local_field"),
        ]),
        (swi_wf, outputnode, [("outputnode.swi", "swi"), ("outputnode.minip", "minip")]),
        (run_outputs_wf, outputnode, [
            ("outputnode.chimap_meta", "chimap_meta"), ("outputnode.mask_meta", "mask_meta"),
            ("outputnode.fields_meta", "fields_meta"), ("outputnode.swi_meta", "swi_meta"),
            ("outputnode.relaxometry_meta", "relaxometry_meta"),
        ]),
    ])  # fmt:skip
    # the methods text is the stage families' own, gathered by `visit_desc` in graph order

    if not (foci or veins or lesions):
        workflow.connect([
            (run_outputs_wf, outputnode, [
                ("outputnode.figures", "figures"), ("outputnode.figure_keys", "figure_keys"),
            ]),
        ])  # fmt:skip
        return workflow
    readouts_wf = init_readouts_wf(
        mem_gb=mem_gb, foci=foci, veins=veins, lesions=lesions, hct=hct, csf_labels=csf_labels,
        white_matter_labels=white_matter_labels, parameters=parameters,
    )  # fmt:skip
    all_figures = pe.Node(niu.Merge(2, ravel_inputs=True), name="all_figures",
                          run_without_submitting=True)  # fmt:skip
    all_figure_keys = pe.Node(niu.Merge(2, ravel_inputs=True), name="all_figure_keys",
                              run_without_submitting=True)  # fmt:skip
    workflow.connect([
        (inputnode, readouts_wf, [
            ("labels", "inputnode.labels"), ("lesions", "inputnode.lesions"),
            ("lesion_file", "inputnode.lesion_file"), ("lesion_names", "inputnode.lesion_names"),
        ]),
        (fieldmap_wf, readouts_wf, [
            ("outputnode.magnitude", "inputnode.magnitude"),
            ("outputnode.r2star", "inputnode.r2star"),
        ]),
        (inversion_wf, readouts_wf, [
            ("outputnode.chimap", "inputnode.chimap"), ("outputnode.mask", "inputnode.mask"),
        ]),
        (swi_wf, readouts_wf, [("outputnode.swi", "inputnode.swi")]),
        (run_outputs_wf, all_figures, [("outputnode.figures", "in1")]),
        (readouts_wf, all_figures, [("outputnode.figures", "in2")]),
        (run_outputs_wf, all_figure_keys, [("outputnode.figure_keys", "in1")]),
        (readouts_wf, all_figure_keys, [("outputnode.figure_keys", "in2")]),
        (all_figures, outputnode, [("out", "figures")]),
        (all_figure_keys, outputnode, [("out", "figure_keys")]),
        (readouts_wf, outputnode, [
            ("outputnode.foci_dseg", "foci_dseg"), ("outputnode.foci_lookup", "foci_lookup"),
            ("outputnode.foci_table", "foci_table"), ("outputnode.foci_meta", "foci_meta"),
            ("outputnode.veins_mask", "veins_mask"), ("outputnode.veins_table", "veins_table"),
            ("outputnode.veins_meta", "veins_meta"), ("outputnode.lesions_table", "lesions_table"),
            ("outputnode.lesions_meta", "lesions_meta"),
        ]),
    ])  # fmt:skip
    return workflow


def _stage(parameters, omp_nthreads):
    """The traits every stage node takes: its thread count and the user's settings of it."""

    def stage_inputs(stage):
        return {"omp_nthreads": omp_nthreads, "params": dict(parameters.get(stage, {}))}

    return stage_inputs


def init_fieldmap_wf(
    *,
    echo_times,
    mem_gb,
    omp_nthreads=1,
    phase_units="auto",
    sidecar_units="missing",
    phase_sign=1,
    mask_method="otsu",
    mask_file=None,
    unwrap_method="romeo",
    combine_method="linear",
    relaxometry_method="loglinear",
    parameters=None,
    name="fieldmap_wf",
):
    """Echoes -> brain mask, unwrapped phase, field (Hz) and R2*/T2* (two echoes or more).

    Inputs: magnitude, phase (or real, imag): one file per echo; echo_times (s).
    Outputs: magnitude (4-D, arbitrary units), brain_mask, field (Hz) and its standard error
    noise (Hz), r2star (1/s), t2star (s),
    params ({stage: settings} of phase_units, mask, unwrap, combine, relaxometry), warnings.
    Arguments as in `init_qsm_wf`.
    """
    parameters = parameters or {}
    cites = load_json("citations.json")
    stage_inputs = _stage(parameters, omp_nthreads)
    workflow = Workflow(name=name)
    n = len(echo_times)
    masking = (
        "the brain mask was given by the user"
        if mask_file
        else f"a brain mask was computed with {cites['mask'][mask_method][0]}"
    )
    workflow.__desc__ = (
        f"The phase of {n} echo{'es' if n > 1 else ''} (TE = "
        f"{', '.join(f'{1e3 * te:g}' for te in echo_times)} ms) was scaled to radians and "
        f"{masking}. The phase was unwrapped with {cites['unwrap'][unwrap_method][0]} and "
        f"the field was estimated with {cites['combine'][combine_method][0]}."
    )
    if n > 1:
        workflow.__desc__ += f" R2* was fitted with {cites['relaxometry'][relaxometry_method][0]}."
    workflow.__desc__ += " "  # the next family's sentences follow in the same paragraph
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["magnitude", "phase", "real", "imag", "echo_times"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["magnitude", "brain_mask", "field", "noise", "r2star",
                                      "t2star", "params", "warnings"]),
        name="outputnode",
    )  # fmt:skip
    phase_units_node = pe.Node(
        LoadEchoes(units=phase_units, sidecar_units=sidecar_units, sign=phase_sign),
        name="phase_units",
        mem_gb=mem_gb["phase_units"],
    )
    mask = pe.Node(
        BrainMask(method=mask_method, **stage_inputs("mask")),
        name="mask", mem_gb=mem_gb["mask"], n_procs=omp_nthreads,
    )  # fmt:skip
    if mask_file:
        mask.inputs.mask_file = str(mask_file)
    unwrap = pe.Node(
        Unwrap(method=unwrap_method, **stage_inputs("unwrap")),
        name="unwrap", mem_gb=mem_gb["unwrap"], n_procs=omp_nthreads,
    )  # fmt:skip
    combine = pe.Node(
        FitField(method=combine_method, **stage_inputs("combine")),
        name="combine", mem_gb=mem_gb["combine"], n_procs=omp_nthreads,
    )  # fmt:skip
    params = pe.Node(niu.Function(function=_named, input_names=["names", "in1", "in2", "in3",
                                                                "in4", "in5"],
                                  output_names=["out"]),
                     name="params", run_without_submitting=True)  # fmt:skip
    params.inputs.names = ["phase", "mask", "unwrap", "combine", "relaxometry"]
    warnings = pe.Node(niu.Merge(5, ravel_inputs=True), name="warnings",
                       run_without_submitting=True)  # fmt:skip
    workflow.connect([
        (inputnode, phase_units_node, [
            ("magnitude", "magnitude"), ("phase", "phase"), ("real", "real"), ("imag", "imag"),
        ]),
        (inputnode, mask, [("echo_times", "echo_times")]),
        (phase_units_node, mask, [("magnitude", "magnitude"), ("phase", "phase")]),
        (inputnode, unwrap, [("echo_times", "echo_times")]),
        (phase_units_node, unwrap, [("magnitude", "magnitude"), ("phase", "phase")]),
        (mask, unwrap, [("out_file", "mask")]),
        (inputnode, combine, [("echo_times", "echo_times")]),
        (phase_units_node, combine, [("magnitude", "magnitude")]),
        (mask, combine, [("out_file", "mask")]),
        (unwrap, combine, [("out_file", "phase")]),
        (phase_units_node, params, [("params", "in1")]),
        (mask, params, [("params", "in2")]),
        (unwrap, params, [("params", "in3")]),
        (combine, params, [("params", "in4")]),
        (phase_units_node, warnings, [("warnings", "in1")]),
        (mask, warnings, [("warnings", "in2")]),
        (unwrap, warnings, [("warnings", "in3")]),
        (combine, warnings, [("warnings", "in4")]),
        (phase_units_node, outputnode, [("magnitude", "magnitude")]),
        (mask, outputnode, [("out_file", "brain_mask")]),
        (combine, outputnode, [("out_file", "field"), ("noise", "noise")]),
        (params, outputnode, [("out", "params")]),
        (warnings, outputnode, [("out", "warnings")]),
    ])  # fmt:skip
    if n > 1:  # R2* needs two echoes at least
        relaxometry = pe.Node(
            R2Star(method=relaxometry_method, **stage_inputs("relaxometry")),
            name="relaxometry", mem_gb=mem_gb["relaxometry"], n_procs=omp_nthreads,
        )  # fmt:skip
        workflow.connect([
            (inputnode, relaxometry, [("echo_times", "echo_times")]),
            (phase_units_node, relaxometry, [("magnitude", "magnitude")]),
            (mask, relaxometry, [("out_file", "mask")]),
            (relaxometry, params, [("params", "in5")]),
            (relaxometry, warnings, [("warnings", "in5")]),
            (relaxometry, outputnode, [("out_file", "r2star"), ("t2star", "t2star")]),
        ])  # fmt:skip
    return workflow


def _named(names, in1=None, in2=None, in3=None, in4=None, in5=None):
    """{name: settings} of the stages that ran (a Function node: imports nothing)."""
    values = [in1, in2, in3, in4, in5]
    return {n: v for n, v in zip(names, values, strict=False) if v is not None}


def init_inversion_wf(
    *,
    mem_gb,
    omp_nthreads=1,
    background_method="lbv",
    inversion_method="tfi",
    reference="mean",
    reference_labels=(),
    parameters=None,
    two_pass=False,
    name="inversion_wf",
):
    """Field (Hz) -> local field (ppm) -> referenced susceptibility (ppm).

    Inputs: field (Hz) and its standard error noise (Hz: edge voxels with an unreliable field
    are left out of background removal, and TGV's strength follows its level), brain_mask,
    echo_times (s), field_strength (T), labels (for the 'labels' reference). Outputs:
    local_field (ppm), mask (where the local field and chi are valid), chimap (ppm), params
    ({stage: settings} of background, inversion, reference), warnings. Arguments as in
    `init_qsm_wf`. After LBV the inversion is given the mask LBV took its boundary from (TFI
    gives back the brain's own field that LBV removed there). two_pass: two-pass artefact
    reduction (Stewart et al. 2022): background removal and inversion once more on a mask
    without the unreliable voxels inside the brain (`HollowMask`, settings under
    parameters["two_pass"]), that map kept where it is valid and the full mask's map in the
    voxels it left out (`TwoPass`; local_field stays the full mask's).
    """
    parameters = parameters or {}
    cites = load_json("citations.json")
    stage_inputs = _stage(parameters, omp_nthreads)
    workflow = Workflow(name=name)
    workflow.__desc__ = (
        f"Background fields were removed with {cites['background'][background_method][0]}, "
        f"and susceptibility was computed with {cites['inversion'][inversion_method][0]}, "
        f"referenced to {cites['reference'][reference][0]}. "
    )
    if two_pass:
        workflow.__desc__ += f"{cites['two_pass']['default'][0]}. "
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["field", "noise", "brain_mask", "echo_times",
                                      "field_strength", "labels"]),
        name="inputnode",
    )  # fmt:skip
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["local_field", "mask", "chimap", "params", "warnings"]),
        name="outputnode",
    )
    background = pe.Node(
        RemoveBackground(method=background_method, **stage_inputs("background")),
        name="background", mem_gb=mem_gb["background"], n_procs=omp_nthreads,
    )  # fmt:skip
    invert = pe.Node(
        Invert(method=inversion_method, **stage_inputs("inversion")),
        name="invert", mem_gb=mem_gb["invert"], n_procs=omp_nthreads,
    )  # fmt:skip
    reference_node = pe.Node(
        Reference(method=reference, params=dict(parameters.get("reference", {}))),
        name="reference",
        mem_gb=mem_gb["reference"],
    )
    if reference == "labels":
        reference_node.inputs.params = {
            **reference_node.inputs.params,
            "label_values": list(reference_labels),
        }
        workflow.connect(inputnode, "labels", reference_node, "labels")
    params = pe.Node(niu.Function(function=_named, input_names=["names", "in1", "in2", "in3"],
                                  output_names=["out"]),
                     name="params", run_without_submitting=True)  # fmt:skip
    params.inputs.names = ["background", "inversion", "reference"]
    warnings = pe.Node(niu.Merge(6 if two_pass else 3, ravel_inputs=True), name="warnings",
                       run_without_submitting=True)  # fmt:skip
    # The map that is referenced: the inversion's, or the two passes joined.
    chimap = _two_pass(workflow, inputnode, background, invert, warnings, mem_gb=mem_gb,
                       stage_inputs=stage_inputs) if two_pass else invert  # fmt:skip
    if background_method == "lbv":
        # TFI gives back the brain's own field that LBV took for background at its boundary.
        workflow.connect(background, "method_mask", invert, "lbv_mask")
    workflow.connect([
        (inputnode, background, [("field_strength", "field_strength"), ("field", "field"),
                                 ("brain_mask", "mask"), ("noise", "noise"),
                                 ("echo_times", "echo_times")]),
        (inputnode, invert, [
            ("echo_times", "echo_times"), ("field_strength", "field_strength"),
            ("brain_mask", "brain_mask"), ("noise", "noise"),
        ]),
        (background, invert, [("out_file", "local_field"), ("mask", "mask")]),
        (chimap, reference_node, [("out_file", "chimap"), ("mask", "mask")]),
        (background, params, [("params", "in1")]),
        (chimap, params, [("params", "in2")]),
        (reference_node, params, [("params", "in3")]),
        (background, warnings, [("warnings", "in1")]),
        (invert, warnings, [("warnings", "in2")]),
        (reference_node, warnings, [("warnings", "in3")]),
        (background, outputnode, [("out_file", "local_field")]),
        (chimap, outputnode, [("mask", "mask")]),
        (reference_node, outputnode, [("out_file", "chimap")]),
        (params, outputnode, [("out", "params")]),
        (warnings, outputnode, [("out", "warnings")]),
    ])  # fmt:skip
    return workflow


def _two_pass(workflow, inputnode, background, invert, warnings, *, mem_gb, stage_inputs):
    """Pass 1 of two-pass artefact reduction beside `background` and `invert` (pass 2), and the
    node that joins them (its outputs: out_file, mask, params, warnings)."""
    # The pass-1 mask reads what background removal reads; pass 1 runs each stage once more
    # (the same estimates); joining holds four volumes and writes two, as referencing does.
    hollow_mask = pe.Node(
        HollowMask(**stage_inputs("two_pass")),
        name="hollow_mask", mem_gb=mem_gb["background"], n_procs=background.n_procs,
    )  # fmt:skip
    background_pass1 = pe.Node(
        RemoveBackground(method=background.inputs.method, **stage_inputs("background")),
        name="background_pass1", mem_gb=mem_gb["background"], n_procs=background.n_procs,
    )  # fmt:skip
    invert_pass1 = pe.Node(
        Invert(method=invert.inputs.method, **stage_inputs("inversion")),
        name="invert_pass1", mem_gb=mem_gb["invert"], n_procs=invert.n_procs,
    )  # fmt:skip
    two_pass = pe.Node(TwoPass(), name="two_pass", mem_gb=mem_gb["reference"])
    if background.inputs.method == "lbv":
        workflow.connect(background_pass1, "method_mask", invert_pass1, "lbv_mask")
    workflow.connect([
        (inputnode, hollow_mask, [("field", "field"), ("noise", "noise"),
                                  ("brain_mask", "mask"), ("echo_times", "echo_times")]),
        (inputnode, background_pass1, [("field_strength", "field_strength"), ("field", "field")]),
        (hollow_mask, background_pass1, [("out_file", "mask")]),
        (inputnode, invert_pass1, [
            ("echo_times", "echo_times"), ("field_strength", "field_strength"),
            ("brain_mask", "brain_mask"), ("noise", "noise"),
        ]),
        (background_pass1, invert_pass1, [("out_file", "local_field"), ("mask", "mask")]),
        (invert_pass1, two_pass, [("out_file", "chi_pass1")]),
        (background_pass1, two_pass, [("mask", "valid_pass1")]),
        (invert, two_pass, [("out_file", "chi_pass2"), ("mask", "mask_pass2"),
                            ("params", "inversion_params")]),
        (hollow_mask, two_pass, [("params", "hollow_params")]),
        (hollow_mask, warnings, [("warnings", "in4")]),
        (background_pass1, warnings, [("warnings", "in5")]),
        (invert_pass1, warnings, [("warnings", "in6")]),
    ])  # fmt:skip
    return two_pass


def init_swi_wf(*, mem_gb, omp_nthreads=1, parameters=None, name="swi_wf"):
    """Susceptibility-weighted image and its minimum intensity projection.

    Inputs: magnitude (4-D), local_field (ppm), mask, echo_times (s), field_strength (T).
    Outputs: swi, minip (magnitude units), params (its settings), warnings.
    """
    parameters = parameters or {}
    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["magnitude", "local_field", "mask", "echo_times",
                                      "field_strength"]),
        name="inputnode",
    )  # fmt:skip
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["swi", "minip", "params", "warnings"]), name="outputnode"
    )
    swi = pe.Node(
        SWI(**_stage(parameters, omp_nthreads)("swi")),
        name="swi", mem_gb=mem_gb["swi"], n_procs=omp_nthreads,
    )  # fmt:skip
    workflow.connect([
        (inputnode, swi, [
            ("echo_times", "echo_times"), ("field_strength", "field_strength"),
            ("magnitude", "magnitude"), ("local_field", "local_field"), ("mask", "mask"),
        ]),
        (swi, outputnode, [
            ("out_file", "swi"), ("minip", "minip"), ("params", "params"),
            ("warnings", "warnings"),
        ]),
    ])  # fmt:skip
    return workflow


def init_run_outputs_wf(*, mem_gb, relaxometry=True, name="run_outputs_wf"):
    """The run's report figures and the sidecars of its maps.

    Inputs: the maps (magnitude, brain_mask, field, local_field, mask, chimap, r2star, swi,
    minip), sources, echo_times (s), field_strength (T), and the stage families' params and
    warnings. Outputs: figures and figure_keys, and the sidecars chimap_meta, mask_meta,
    fields_meta, swi_meta, relaxometry_meta (with `relaxometry`: two echoes or more).
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=[
            "magnitude", "brain_mask", "field", "local_field", "mask", "chimap", "r2star", "swi",
            "minip", "sources", "echo_times", "field_strength", "fieldmap_params",
            "inversion_params", "swi_params", "fieldmap_warnings", "inversion_warnings",
            "swi_warnings",
        ]),
        name="inputnode",
    )  # fmt:skip
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["figures", "figure_keys", "chimap_meta", "mask_meta",
                                      "fields_meta", "swi_meta", "relaxometry_meta"]),
        name="outputnode",
    )  # fmt:skip
    figures = pe.Node(RunFigures(), name="figures", mem_gb=mem_gb["figures"])
    warnings = pe.Node(niu.Merge(3, ravel_inputs=True), name="warnings",
                       run_without_submitting=True)  # fmt:skip
    sidecars = pe.Node(Sidecars(), name="sidecars", run_without_submitting=True)
    split = pe.Node(niu.Function(function=_split_params, input_names=["fieldmap", "inversion"],
                                 output_names=["phase", "mask", "unwrap", "combine",
                                               "relaxometry", "background", "inversion",
                                               "reference"]),
                    name="split", run_without_submitting=True)  # fmt:skip
    workflow.connect([
        (inputnode, figures, [
            ("magnitude", "magnitude"), ("brain_mask", "brain_mask"), ("field", "field"),
            ("local_field", "local_field"), ("mask", "mask"), ("chimap", "chimap"),
            ("swi", "swi"), ("minip", "minip"),
        ]),
        (inputnode, warnings, [
            ("fieldmap_warnings", "in1"), ("inversion_warnings", "in2"), ("swi_warnings", "in3"),
        ]),
        (inputnode, split, [("fieldmap_params", "fieldmap"), ("inversion_params", "inversion")]),
        (inputnode, sidecars, [
            ("sources", "sources"), ("echo_times", "echo_times"),
            ("field_strength", "field_strength"), ("swi_params", "swi_params"),
        ]),
        (split, sidecars, [
            ("phase", "phase_params"), ("mask", "mask_params"), ("unwrap", "unwrap_params"),
            ("combine", "combine_params"), ("background", "background_params"),
            ("inversion", "inversion_params"), ("reference", "reference_params"),
        ]),
        (warnings, sidecars, [("out", "warnings")]),
        (figures, outputnode, [("out_files", "figures"), ("keys", "figure_keys")]),
        (sidecars, outputnode, [
            ("chimap", "chimap_meta"), ("mask", "mask_meta"), ("fields", "fields_meta"),
            ("swi", "swi_meta"),
        ]),
    ])  # fmt:skip
    if relaxometry:
        workflow.connect([
            (inputnode, figures, [("r2star", "r2star")]),
            (split, sidecars, [("relaxometry", "relaxometry_params")]),
            (sidecars, outputnode, [("relaxometry", "relaxometry_meta")]),
        ])  # fmt:skip
    return workflow


def _split_params(fieldmap, inversion):
    """The stage families' {stage: settings} back into one output per stage (a Function node)."""
    return (
        fieldmap["phase"], fieldmap["mask"], fieldmap["unwrap"], fieldmap["combine"],
        fieldmap.get("relaxometry"), inversion["background"], inversion["inversion"],
        inversion["reference"],
    )  # fmt:skip


def init_readouts_wf(
    *,
    mem_gb,
    foci=True,
    veins=False,
    lesions=False,
    hct=0.40,
    csf_labels=(),
    white_matter_labels=(),
    parameters=None,
    name="readouts_wf",
):
    """Clinical read-outs of a Chimap: foci (microbleeds, calcifications), veins and venous
    oxygen saturation, paramagnetic rims of given lesions; and their report figures.

    Inputs: chimap (ppm), mask, magnitude (4-D), r2star (1/s, optional), swi, labels (a
    segmentation on the grid, optional), lesions (labels or a mask on the grid), lesion_file
    (the user's file, for messages) and lesion_names ({index: name}; empty for a mask).
    Outputs: foci_dseg, foci_lookup, foci_table, foci_meta, veins_mask, veins_table,
    veins_meta, lesions_table, lesions_meta, figures, figure_keys.
    hct: haematocrit of the oxygenation model; csf_labels / white_matter_labels: label indices
    of the segmentation for the veins' reference and the lesions' NAWM ring (empty: none);
    parameters: {"foci" | "veins" | "lesions": {parameter: value}}.
    """
    parameters = parameters or {}
    cites = load_json("citations.json")
    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["chimap", "mask", "magnitude", "r2star", "swi", "labels",
                                      "lesions", "lesion_file", "lesion_names"]),
        name="inputnode",
    )  # fmt:skip
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["foci_dseg", "foci_lookup", "foci_table", "foci_meta",
                                      "veins_mask", "veins_table", "veins_meta", "lesions_table",
                                      "lesions_meta", "figures", "figure_keys"]),
        name="outputnode",
    )  # fmt:skip
    figures = pe.Node(ReadoutFigures(), name="figures", mem_gb=mem_gb["figures"])
    workflow.connect([
        (inputnode, figures, [("chimap", "chimap"), ("mask", "mask"), ("swi", "swi")]),
        (figures, outputnode, [("out_files", "figures"), ("keys", "figure_keys")]),
    ])  # fmt:skip
    sentences = []
    if foci:
        foci_node = pe.Node(Foci(params=dict(parameters.get("foci", {}))), name="foci",
                            mem_gb=mem_gb["readouts"])  # fmt:skip
        workflow.connect([
            (inputnode, foci_node, [
                ("chimap", "chimap"), ("mask", "mask"), ("magnitude", "magnitude"),
                ("r2star", "r2star"),
            ]),
            (foci_node, figures, [("dseg", "foci")]),
            (foci_node, outputnode, [
                ("dseg", "foci_dseg"), ("lookup", "foci_lookup"), ("table", "foci_table"),
                ("meta", "foci_meta"),
            ]),
        ])  # fmt:skip
        if lesions:
            workflow.connect([
                (inputnode, foci_node, [("lesions", "lesions"), ("lesion_names", "lesion_names")]),
            ])  # fmt:skip
        sentences.append(cites["foci"]["default"][0] + ".")
    if veins:
        veins_node = pe.Node(
            Veins(hct=hct, params=dict(parameters.get("veins", {})),
                  reference_labels=list(csf_labels)),
            name="veins", mem_gb=mem_gb["readouts"],
        )  # fmt:skip
        workflow.connect([
            (inputnode, veins_node, [("chimap", "chimap"), ("mask", "mask")]),
            (veins_node, figures, [("mask_file", "veins")]),
            (veins_node, outputnode, [
                ("mask_file", "veins_mask"), ("table", "veins_table"), ("meta", "veins_meta"),
            ]),
        ])  # fmt:skip
        if csf_labels:
            workflow.connect(inputnode, "labels", veins_node, "labels")
        if foci:
            workflow.connect(foci_node, "dseg", veins_node, "foci")
        reference = "CSF of the segmentation" if csf_labels else "the tissue 2-5 mm around them"
        sentences.append(cites["veins"]["default"][0].format(reference=reference, hct=hct) + ".")
    if lesions:
        lesions_node = pe.Node(
            Lesions(params=dict(parameters.get("lesions", {})),
                    white_matter_labels=list(white_matter_labels)),
            name="lesions", mem_gb=mem_gb["readouts"],
        )  # fmt:skip
        workflow.connect([
            (inputnode, lesions_node, [
                ("chimap", "chimap"), ("mask", "mask"), ("lesions", "lesions"),
                ("lesion_file", "lesion_file"), ("lesion_names", "names"),
            ]),
            (lesions_node, figures, [("lesions", "lesions"), ("rims", "rims")]),
            (lesions_node, outputnode, [("table", "lesions_table"), ("meta", "lesions_meta")]),
        ])  # fmt:skip
        if white_matter_labels:
            workflow.connect(inputnode, "labels", lesions_node, "labels")
        if foci:
            workflow.connect([
                (foci_node, lesions_node, [("dseg", "foci"), ("table", "foci_table")]),
            ])  # fmt:skip
        if veins:
            workflow.connect(veins_node, "mask_file", lesions_node, "veins")
        rim_mm = parameters.get("lesions", {}).get("rim_mm", 2.0)
        sentences.append(cites["lesions"]["default"][0].format(rim_mm=rim_mm) + ".")
    workflow.__desc__ = "".join(f"{sentence} " for sentence in sentences)
    return workflow
