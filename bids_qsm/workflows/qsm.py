"""The per-run graph: one multi-echo GRE acquisition -> field -> local field -> susceptibility."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_qsm.data import load_json
from bids_qsm.interfaces.fieldmap import BrainMask, FitField, LoadEchoes, R2Star, Unwrap
from bids_qsm.interfaces.inversion import Invert, Reference, RemoveBackground
from bids_qsm.interfaces.metadata import Sidecars
from bids_qsm.interfaces.reports import RunFigures
from bids_qsm.interfaces.swi import SWI

_INPUTS = [
    "magnitude", "phase", "real", "imag", "echo_times", "field_strength", "sources", "labels",
]  # fmt:skip
_OUTPUTS = [
    "magnitude", "brain_mask", "chimap", "mask", "r2star", "t2star", "field", "local_field",
    "swi", "minip", "figures", "figure_keys", "chimap_meta", "mask_meta", "relaxometry_meta",
    "fields_meta", "swi_meta",
]  # fmt:skip


def estimate_mem_gb(n_voxels, n_echoes):
    """Peak memory (GB) of each stage's node for a grid of `n_voxels` and `n_echoes` echoes.

    Counted in float32 volumes that a stage holds at once (inputs, outputs, FFT work arrays on
    a padded bounding box), plus the interpreter and its libraries.
    """
    volume = n_voxels * 4 / 1e9
    base = 0.4
    return {
        "phase_units": base + volume * 5 * n_echoes,
        "mask": base + volume * (2 * n_echoes + 10),
        "unwrap": base + volume * (3 * n_echoes + 30),
        "combine": base + volume * (3 * n_echoes + 10),
        "relaxometry": base + volume * (2 * n_echoes + 8),
        "background": base + volume * 40,
        "invert": base + volume * 30,
        "reference": base + volume * 4,
        "swi": base + volume * (2 * n_echoes + 10),
        "figures": base + volume * (2 * n_echoes + 8),
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
    background_method="resharp",
    inversion_method="tgv",
    reference="mean",
    reference_labels=(),
    parameters=None,
    name="qsm_wf",
):
    """Susceptibility, brain mask and R2*/T2* maps of one multi-echo GRE run.

    echo_times: seconds, ascending (they only shape the description; the data arrive on
    `inputnode.echo_times`); mem_gb: per-stage estimates from `estimate_mem_gb`;
    sidecar_units: the phase sidecar's `Units` ("rad", "arbitrary" or "missing");
    mask_file: the user's brain mask on the run's grid, used instead of `mask_method`;
    reference_labels: label indices of the reference region when `reference` is "labels" (the
    label image arrives on `inputnode.labels`); parameters: {stage: {parameter: value}} for the
    stages mask, unwrap, combine, relaxometry, background, inversion, reference and swi, where
    the method's defaults are not wanted.
    """
    parameters = parameters or {}
    cites = load_json("citations.json")
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
        "the field was estimated with "
        f"{cites['combine'][combine_method][0]}. Background fields were removed with "
        f"{cites['background'][background_method][0]}, and susceptibility was computed with "
        f"{cites['inversion'][inversion_method][0]}, referenced to "
        f"{cites['reference'][reference][0]}."
    )
    if n > 1:
        workflow.__desc__ += f" R2* was fitted with {cites['relaxometry'][relaxometry_method][0]}."

    def stage_inputs(stage):
        return {"omp_nthreads": omp_nthreads, "params": dict(parameters.get(stage, {}))}

    inputnode = pe.Node(niu.IdentityInterface(fields=_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUTS), name="outputnode")

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
    swi = pe.Node(
        SWI(**stage_inputs("swi")), name="swi", mem_gb=mem_gb["swi"], n_procs=omp_nthreads
    )
    figures = pe.Node(RunFigures(), name="figures", mem_gb=mem_gb["figures"])
    warnings = pe.Node(niu.Merge(9, ravel_inputs=True), name="warnings",
                       run_without_submitting=True)  # fmt:skip
    sidecars = pe.Node(Sidecars(), name="sidecars", run_without_submitting=True)

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
        (inputnode, background, [("field_strength", "field_strength")]),
        (combine, background, [("out_file", "field")]),
        (mask, background, [("out_file", "mask")]),
        (inputnode, invert, [
            ("echo_times", "echo_times"), ("field_strength", "field_strength"),
        ]),
        (background, invert, [("out_file", "local_field"), ("mask", "mask")]),
        (mask, invert, [("out_file", "brain_mask")]),
        (invert, reference_node, [("out_file", "chimap"), ("mask", "mask")]),
        (inputnode, sidecars, [
            ("sources", "sources"), ("echo_times", "echo_times"),
            ("field_strength", "field_strength"),
        ]),
        (phase_units_node, sidecars, [("params", "phase_params")]),
        (mask, sidecars, [("params", "mask_params")]),
        (unwrap, sidecars, [("params", "unwrap_params")]),
        (combine, sidecars, [("params", "combine_params")]),
        (background, sidecars, [("params", "background_params")]),
        (invert, sidecars, [("params", "inversion_params")]),
        (reference_node, sidecars, [("params", "reference_params")]),
        (inputnode, swi, [("echo_times", "echo_times"), ("field_strength", "field_strength")]),
        (phase_units_node, swi, [("magnitude", "magnitude")]),
        (background, swi, [("out_file", "local_field"), ("mask", "mask")]),
        (phase_units_node, figures, [("magnitude", "magnitude")]),
        (mask, figures, [("out_file", "brain_mask")]),
        (combine, figures, [("out_file", "field")]),
        (background, figures, [("out_file", "local_field"), ("mask", "mask")]),
        (reference_node, figures, [("out_file", "chimap")]),
        (swi, figures, [("out_file", "swi"), ("minip", "minip")]),
        (phase_units_node, warnings, [("warnings", "in1")]),
        (mask, warnings, [("warnings", "in2")]),
        (unwrap, warnings, [("warnings", "in3")]),
        (combine, warnings, [("warnings", "in4")]),
        (background, warnings, [("warnings", "in6")]),
        (invert, warnings, [("warnings", "in7")]),
        (reference_node, warnings, [("warnings", "in8")]),
        (swi, warnings, [("warnings", "in9")]),
        (warnings, sidecars, [("out", "warnings")]),
        (swi, sidecars, [("params", "swi_params")]),
        (reference_node, outputnode, [("out_file", "chimap")]),
        (phase_units_node, outputnode, [("magnitude", "magnitude")]),
        (mask, outputnode, [("out_file", "brain_mask")]),
        (swi, outputnode, [("out_file", "swi"), ("minip", "minip")]),
        (figures, outputnode, [("out_files", "figures"), ("keys", "figure_keys")]),
        (background, outputnode, [("out_file", "local_field")]),
        (invert, outputnode, [("mask", "mask")]),
        (combine, outputnode, [("out_file", "field")]),
        (sidecars, outputnode, [
            ("chimap", "chimap_meta"), ("mask", "mask_meta"), ("fields", "fields_meta"),
            ("swi", "swi_meta"),
        ]),
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
            (relaxometry, sidecars, [("params", "relaxometry_params")]),
            (relaxometry, figures, [("out_file", "r2star")]),
            (relaxometry, warnings, [("warnings", "in5")]),
            (relaxometry, outputnode, [("out_file", "r2star"), ("t2star", "t2star")]),
            (sidecars, outputnode, [("relaxometry", "relaxometry_meta")]),
        ])  # fmt:skip
    return workflow
