"""Writing a run's derivatives under the BIDS-Derivatives root."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

_FIELDS = [
    "source_file", "chimap", "mask", "r2star", "t2star",
    "chimap_meta", "mask_meta", "relaxometry_meta",
]  # fmt:skip


def init_qsm_derivatives_wf(*, output_dir, name="qsm_derivatives_wf"):
    """Sinks for the Chimap, brain mask and R2*/T2* maps of one run, named after its source."""
    from bids_qsm.interfaces.sink import DerivativesDataSink

    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_FIELDS), name="inputnode")

    def sink(name, **entities):
        return pe.Node(
            DerivativesDataSink(base_directory=str(output_dir), compress=True, **entities),
            name=name,
            run_without_submitting=True,
        )

    ds_chimap = sink("ds_chimap", suffix="Chimap")
    ds_mask = sink("ds_mask", desc="brain", suffix="mask")
    ds_r2star = sink("ds_r2star", suffix="R2starmap", Units="1/s")
    ds_t2star = sink("ds_t2star", suffix="T2starmap", Units="s")

    workflow.connect([
        (inputnode, ds_chimap, [
            ("source_file", "source_file"), ("chimap", "in_file"), ("chimap_meta", "meta_dict"),
        ]),
        (inputnode, ds_mask, [
            ("source_file", "source_file"), ("mask", "in_file"), ("mask_meta", "meta_dict"),
        ]),
        (inputnode, ds_r2star, [
            ("source_file", "source_file"), ("r2star", "in_file"),
            ("relaxometry_meta", "meta_dict"),
        ]),
        (inputnode, ds_t2star, [
            ("source_file", "source_file"), ("t2star", "in_file"),
            ("relaxometry_meta", "meta_dict"),
        ]),
    ])  # fmt:skip
    return workflow
