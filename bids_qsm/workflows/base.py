"""The top two workflow levels: the whole dataset, and one subject. Only these read Settings."""

import os

from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_qsm import __version__
from bids_qsm.workflows.outputs import (
    init_qsm_derivatives_wf,
    init_readouts_derivatives_wf,
    init_roi_derivatives_wf,
)
from bids_qsm.workflows.qsm import estimate_mem_gb, init_qsm_wf
from bids_qsm.workflows.roi import init_labels_node, init_roistats_node, roi_description


def resolve_threads(settings):
    """Fill in `nprocs` and `omp_nthreads` from the machine where the user left them out."""
    nipype = settings.nipype
    nipype.nprocs = nipype.nprocs or len(os.sched_getaffinity(0))
    nipype.omp_nthreads = nipype.omp_nthreads or min(nipype.nprocs, 8)
    return nipype


def init_bids_qsm_wf(settings, runs, segmentations=None, masks=None, lesions=None):
    """One sub-workflow per selected subject, each processing that subject's MEGRE runs.

    segmentations: {run prefix: (Segmentation, reference label indices)} for runs with one;
    masks: {run prefix: the user's brain mask (path)} for runs with one; lesions: {run prefix:
    `lesion_masks.LesionInput`} for runs with one (paramagnetic rims).
    """
    workflow = Workflow(name="bids_qsm_wf")
    workflow.base_dir = str(settings.execution.work_dir)
    workflow.__postdesc__ = f"\n\nProcessed with bids_qsm {__version__}."
    by_subject = {}
    for run in runs:
        by_subject.setdefault(run.subject, []).append(run)
    for subject, subject_runs in sorted(by_subject.items()):
        subject_wf = init_single_subject_wf(
            subject, subject_runs, settings, segmentations or {}, masks or {}, lesions or {}
        )
        workflow.add_nodes([subject_wf])
    return workflow


def init_single_subject_wf(subject, runs, settings, segmentations, masks, lesions=None):
    """QSM of every MEGRE run of one subject, written to the derivatives dataset."""
    workflow = Workflow(name=f"sub_{subject}_wf")
    workflow.__desc__ = (
        f"Results included in this manuscript come from quantitative susceptibility mapping "
        f"performed with bids_qsm {__version__}. {len(runs)} multi-echo gradient-echo "
        f"run{'s were' if len(runs) > 1 else ' was'} processed for this subject.\n\n"
    )
    methods = settings.workflow
    threads = resolve_threads(settings).omp_nthreads
    for run in runs:
        shape, _ = run.grid
        n_voxels = shape[0] * shape[1] * shape[2]
        name = run.prefix.replace("-", "_")
        segmentation, label_values = segmentations.get(run.prefix, (None, ()))
        reference = methods.reference
        if reference == "labels" and not label_values:
            reference = "mean"  # the problem was reported when the segmentation was looked up
        mem_gb = estimate_mem_gb(n_voxels, len(run.echoes))
        lesion = (lesions or {}).get(run.prefix)
        csf_labels, white_matter_labels = _readout_labels(segmentation)
        qsm_wf = init_qsm_wf(
            echo_times=run.echo_times,
            mem_gb=mem_gb,
            omp_nthreads=threads,
            phase_units=methods.phase_units,
            sidecar_units=run.phase_units,
            phase_sign=methods.phase_sign,
            mask_method=methods.mask,
            mask_file=masks.get(run.prefix),
            unwrap_method=methods.unwrap,
            combine_method=methods.combine,
            relaxometry_method=methods.relaxometry,
            background_method=methods.background,
            inversion_method=methods.inversion,
            two_pass=methods.two_pass,
            reference=reference,
            reference_labels=label_values,
            parameters=methods.parameters,
            foci=methods.foci,
            veins=methods.veins,
            lesions=lesion is not None,
            hct=methods.hct,
            csf_labels=csf_labels,
            white_matter_labels=white_matter_labels,
            name=f"qsm_{name}_wf",
        )
        complex_input = run.echoes[0].real is not None
        inputs = qsm_wf.inputs.inputnode
        inputs.echo_times = list(run.echo_times)
        inputs.field_strength = run.field_strength
        inputs.sources = run.sources
        if complex_input:
            inputs.real = [str(e.real) for e in run.echoes]
            inputs.imag = [str(e.imag) for e in run.echoes]
        else:
            inputs.magnitude = [str(e.magnitude) for e in run.echoes]
            inputs.phase = [str(e.phase) for e in run.echoes]

        multi_echo = len(run.echo_times) > 1
        derivatives_wf = init_qsm_derivatives_wf(
            output_dir=settings.execution.output_dir, relaxometry=multi_echo, name=f"ds_{name}_wf"
        )
        source = run.echoes[0].real if complex_input else run.echoes[0].phase
        derivatives_wf.inputs.inputnode.source_file = str(source)
        workflow.connect([
            (qsm_wf, derivatives_wf, [
                ("outputnode.chimap", "inputnode.chimap"),
                ("outputnode.mask", "inputnode.mask"),
                ("outputnode.chimap_meta", "inputnode.chimap_meta"),
                ("outputnode.mask_meta", "inputnode.mask_meta"),
                ("outputnode.field", "inputnode.field"),
                ("outputnode.local_field", "inputnode.local_field"),
                ("outputnode.swi", "inputnode.swi"),
                ("outputnode.minip", "inputnode.minip"),
                ("outputnode.figures", "inputnode.figures"),
                ("outputnode.figure_keys", "inputnode.figure_keys"),
                ("outputnode.fields_meta", "inputnode.fields_meta"),
                ("outputnode.swi_meta", "inputnode.swi_meta"),
            ]),
        ])  # fmt:skip
        if multi_echo:
            workflow.connect([
                (qsm_wf, derivatives_wf, [
                    ("outputnode.r2star", "inputnode.r2star"),
                    ("outputnode.t2star", "inputnode.t2star"),
                    ("outputnode.relaxometry_meta", "inputnode.relaxometry_meta"),
                ]),
            ])  # fmt:skip
        if methods.foci or methods.veins or lesion is not None:
            _add_readouts(
                workflow, qsm_wf, run=run, lesion=lesion, methods=methods,
                output_dir=settings.execution.output_dir, source_file=str(source),
                mem_gb=mem_gb["figures"], omp_nthreads=threads, name=name,
            )  # fmt:skip
        if segmentation is not None:
            _add_region_statistics(
                workflow, qsm_wf, run=run, segmentation=segmentation, methods=methods,
                output_dir=settings.execution.output_dir, source_file=str(source),
                mem_gb=mem_gb["figures"], omp_nthreads=threads, name=name,
            )  # fmt:skip
    return workflow


def _add_region_statistics(
    workflow, qsm_wf, *, run, segmentation, methods, output_dir, source_file, mem_gb,
    omp_nthreads, name,
):  # fmt:skip
    """Wire a run's labels (before its QSM workflow) and region table (after it)."""
    labels = init_labels_node(
        segmentation=segmentation, registration=methods.registration, mem_gb=mem_gb,
        omp_nthreads=omp_nthreads, name=f"labels_{name}",
    )  # fmt:skip
    first = run.echoes[0]
    labels.inputs.magnitude = str(first.magnitude or first.real)
    if first.imag is not None:
        labels.inputs.imag = str(first.imag)
    roistats = init_roistats_node(
        segmentation=segmentation, erode_voxels=methods.roi_erode, mem_gb=mem_gb,
        name=f"roistats_{name}",
    )  # fmt:skip
    ds_roi_wf = init_roi_derivatives_wf(
        output_dir=output_dir, registered=segmentation.needs_registration,
        name=f"ds_roi_{name}_wf",
    )  # fmt:skip
    ds_roi_wf.inputs.inputnode.source_file = source_file
    workflow.connect([
        (labels, qsm_wf, [("labels", "inputnode.labels")]),
        (labels, roistats, [("labels", "labels"), ("meta", "labels_meta")]),
        (qsm_wf, roistats, [("outputnode.chimap", "chimap"), ("outputnode.mask", "mask")]),
        (labels, ds_roi_wf, [
            ("labels", "inputnode.labels"), ("lookup_file", "inputnode.lookup"),
            ("meta", "inputnode.labels_meta"),
        ]),
        (roistats, ds_roi_wf, [
            ("out_file", "inputnode.roistats"), ("meta", "inputnode.roistats_meta"),
        ]),
    ])  # fmt:skip
    if segmentation.needs_registration:
        workflow.connect(labels, "transform", ds_roi_wf, "inputnode.transform")
    workflow.__desc__ += roi_description(
        segmentation, registration=methods.registration, erode_voxels=methods.roi_erode
    )


def _readout_labels(segmentation):
    """(CSF, white matter) label indices of a segmentation for the read-outs, () where none."""
    from bids_qsm.qsm.roi import resolve_labels

    found = []
    for spec in ("csf", "white-matter"):
        try:
            found.append(tuple(resolve_labels(spec, segmentation.names)) if segmentation else ())
        except ValueError:  # a segmentation without those names: no such region
            found.append(())
    return tuple(found)


def _add_readouts(
    workflow, qsm_wf, *, run, lesion, methods, output_dir, source_file, mem_gb, omp_nthreads,
    name,
):  # fmt:skip
    """Wire a run's lesion labels (before its QSM workflow) and read-out sinks (after it)."""
    from bids_qsm.interfaces.roi import LabelsOnGrid

    ds_readouts_wf = init_readouts_derivatives_wf(
        output_dir=output_dir, foci=methods.foci, veins=methods.veins,
        lesions=lesion is not None, name=f"ds_readouts_{name}_wf",
    )  # fmt:skip
    ds_readouts_wf.inputs.inputnode.source_file = source_file
    workflow.connect([
        (qsm_wf, ds_readouts_wf, [
            (f"outputnode.{field}", f"inputnode.{field}") for field in (
                "foci_dseg", "foci_lookup", "foci_table", "foci_meta", "veins_mask",
                "veins_table", "veins_meta", "lesions_table", "lesions_meta",
            )
        ]),
    ])  # fmt:skip
    if lesion is None:
        return
    lesion_labels = pe.Node(
        LabelsOnGrid(
            dseg=str(lesion.path), names=lesion.names or {1: "lesion"}, lookup=lesion.lookup,
            kind=methods.registration, omp_nthreads=omp_nthreads,
        ),
        name=f"lesions_{name}", mem_gb=mem_gb, n_procs=omp_nthreads,
    )  # fmt:skip
    if lesion.needs_registration:
        lesion_labels.inputs.reference = str(lesion.reference)
    first = run.echoes[0]
    lesion_labels.inputs.magnitude = str(first.magnitude or first.real)
    if first.imag is not None:
        lesion_labels.inputs.imag = str(first.imag)
    qsm_wf.inputs.inputnode.lesion_file = str(lesion.path)
    qsm_wf.inputs.inputnode.lesion_names = dict(lesion.names)
    workflow.connect(lesion_labels, "labels", qsm_wf, "inputnode.lesions")
