"""The top two workflow levels: the whole dataset, and one subject. Only these read Settings."""

import os

import nibabel as nb
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from bids_qsm import __version__
from bids_qsm.workflows.outputs import init_qsm_derivatives_wf
from bids_qsm.workflows.qsm import estimate_mem_gb, init_qsm_wf


def resolve_threads(settings):
    """Fill in `nprocs` and `omp_nthreads` from the machine where the user left them out."""
    nipype = settings.nipype
    nipype.nprocs = nipype.nprocs or len(os.sched_getaffinity(0))
    nipype.omp_nthreads = nipype.omp_nthreads or min(nipype.nprocs, 8)
    return nipype


def init_bids_qsm_wf(settings, runs):
    """One sub-workflow per selected subject, each processing that subject's MEGRE runs."""
    workflow = Workflow(name="bids_qsm_wf")
    workflow.base_dir = str(settings.execution.work_dir)
    workflow.__postdesc__ = f"\n\nProcessed with bids_qsm {__version__}."
    by_subject = {}
    for run in runs:
        by_subject.setdefault(run.subject, []).append(run)
    for subject, subject_runs in sorted(by_subject.items()):
        workflow.add_nodes([init_single_subject_wf(subject, subject_runs, settings)])
    return workflow


def init_single_subject_wf(subject, runs, settings):
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
        shape = nb.load(run.echoes[0].phase or run.echoes[0].real).shape
        n_voxels = int(shape[0]) * int(shape[1]) * int(shape[2])
        name = run.prefix.replace("-", "_")
        qsm_wf = init_qsm_wf(
            echo_times=run.echo_times,
            mem_gb=estimate_mem_gb(n_voxels, len(run.echoes)),
            omp_nthreads=threads,
            phase_units=methods.phase_units,
            sidecar_units=run.phase_units,
            phase_sign=methods.phase_sign,
            mask_method=methods.mask,
            unwrap_method=methods.unwrap,
            combine_method=methods.combine,
            relaxometry_method=methods.relaxometry,
            background_method=methods.background,
            inversion_method=methods.inversion,
            reference=methods.reference,
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

        derivatives_wf = init_qsm_derivatives_wf(
            output_dir=settings.execution.output_dir, name=f"ds_{name}_wf"
        )
        source = run.echoes[0].real if complex_input else run.echoes[0].phase
        derivatives_wf.inputs.inputnode.source_file = str(source)
        workflow.connect([
            (qsm_wf, derivatives_wf, [
                ("outputnode.chimap", "inputnode.chimap"),
                ("outputnode.mask", "inputnode.mask"),
                ("outputnode.r2star", "inputnode.r2star"),
                ("outputnode.t2star", "inputnode.t2star"),
                ("outputnode.chimap_meta", "inputnode.chimap_meta"),
                ("outputnode.mask_meta", "inputnode.mask_meta"),
                ("outputnode.relaxometry_meta", "inputnode.relaxometry_meta"),
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
    return workflow
