"""Writing a run's derivatives under the BIDS-Derivatives root."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

_FIELDS = [
    "source_file", "chimap", "mask", "r2star", "t2star", "field", "local_field", "swi", "minip",
    "figures", "figure_keys", "chimap_meta", "mask_meta", "relaxometry_meta", "fields_meta",
    "swi_meta",
]  # fmt:skip


def init_qsm_derivatives_wf(*, output_dir, relaxometry=True, name="qsm_derivatives_wf"):
    """Sinks for every map of one run and its report figures, named after its source run.

    The total field (Hz), local field (ppm), SWI and minIP have no BIDS suffix yet; their names
    are listed in the dataset's .bidsignore. relaxometry: write the R2* and T2* maps (a
    single-echo run has none).
    """
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
    ds_field = sink("ds_field", desc="total", suffix="fieldmap", Units="Hz")
    ds_local_field = sink("ds_local_field", desc="local", suffix="fieldmap", Units="ppm")
    ds_swi = sink("ds_swi", suffix="swi")
    ds_minip = sink("ds_minip", suffix="minIP")
    ds_figures = pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), datatype="figures", suffix="qsm",
                            dismiss_entities=("echo", "part")),
        name="ds_figures",
        run_without_submitting=True,
    )  # fmt:skip

    workflow.connect([
        (inputnode, ds_chimap, [
            ("source_file", "source_file"), ("chimap", "in_file"), ("chimap_meta", "meta_dict"),
        ]),
        (inputnode, ds_mask, [
            ("source_file", "source_file"), ("mask", "in_file"), ("mask_meta", "meta_dict"),
        ]),
        (inputnode, ds_field, [
            ("source_file", "source_file"), ("field", "in_file"), ("fields_meta", "meta_dict"),
        ]),
        (inputnode, ds_local_field, [
            ("source_file", "source_file"), ("local_field", "in_file"),
            ("fields_meta", "meta_dict"),
        ]),
        (inputnode, ds_swi, [
            ("source_file", "source_file"), ("swi", "in_file"), ("swi_meta", "meta_dict"),
        ]),
        (inputnode, ds_minip, [
            ("source_file", "source_file"), ("minip", "in_file"), ("swi_meta", "meta_dict"),
        ]),
        (inputnode, ds_figures, [
            ("source_file", "source_file"), ("figures", "in_file"), ("figure_keys", "desc"),
        ]),
    ])  # fmt:skip
    if relaxometry:
        for suffix, field, units in (("R2starmap", "r2star", "1/s"), ("T2starmap", "t2star", "s")):
            ds_map = sink(f"ds_{field}", suffix=suffix, Units=units)
            workflow.connect([
                (inputnode, ds_map, [
                    ("source_file", "source_file"), (field, "in_file"),
                    ("relaxometry_meta", "meta_dict"),
                ]),
            ])  # fmt:skip
    return workflow


def init_roi_derivatives_wf(*, output_dir, registered, name="roi_derivatives_wf"):
    """Sinks for a run's labels on the MEGRE grid, their look-up, transform and chi table."""
    from bids_qsm.interfaces.sink import DerivativesDataSink

    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["source_file", "labels", "lookup", "labels_meta", "transform", "roistats",
                    "roistats_meta"]
        ),
        name="inputnode",
    )  # fmt:skip

    def sink(name, **entities):
        return pe.Node(
            DerivativesDataSink(base_directory=str(output_dir), **entities),
            name=name,
            run_without_submitting=True,
        )

    ds_labels = sink("ds_labels", suffix="dseg", compress=True)
    ds_lookup = sink("ds_lookup", suffix="dseg")
    ds_roistats = sink("ds_roistats", desc="roistats", suffix="Chimap")
    workflow.connect([
        (inputnode, ds_labels, [
            ("source_file", "source_file"), ("labels", "in_file"), ("labels_meta", "meta_dict"),
        ]),
        (inputnode, ds_lookup, [("source_file", "source_file"), ("lookup", "in_file")]),
        (inputnode, ds_roistats, [
            ("source_file", "source_file"), ("roistats", "in_file"),
            ("roistats_meta", "meta_dict"),
        ]),
    ])  # fmt:skip
    if registered:
        ds_transform = sink("ds_transform", **{"from": "T1w", "to": "MEGRE", "mode": "image",
                                              "suffix": "xfm"})  # fmt:skip
        workflow.connect([
            (inputnode, ds_transform, [("source_file", "source_file"), ("transform", "in_file")]),
        ])  # fmt:skip
    return workflow


def init_readouts_derivatives_wf(
    *, output_dir, foci=True, veins=False, lesions=False, name="readouts_derivatives_wf"
):
    """Sinks of a run's clinical read-outs, named after its source run.

    foci: `desc-foci_dseg.nii.gz` (1 paramagnetic, 2 diamagnetic), its `desc-foci_dseg.tsv` and
    `desc-foci_Chimap.tsv`; veins: `desc-veins_mask.nii.gz` and `desc-veins_Chimap.tsv`;
    lesions: `desc-lesions_Chimap.tsv`. Tables come with a JSON sidecar describing the columns.
    """
    from bids_qsm.interfaces.sink import DerivativesDataSink

    workflow = Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["source_file", "foci_dseg", "foci_lookup", "foci_table", "foci_meta",
                    "veins_mask", "veins_table", "veins_meta", "lesions_table", "lesions_meta"]
        ),
        name="inputnode",
    )  # fmt:skip

    def sink(name, in_file, meta=None, **entities):
        node = pe.Node(
            DerivativesDataSink(base_directory=str(output_dir), **entities),
            name=name,
            run_without_submitting=True,
        )
        workflow.connect(inputnode, "source_file", node, "source_file")
        workflow.connect(inputnode, in_file, node, "in_file")
        if meta:
            workflow.connect(inputnode, meta, node, "meta_dict")
        return node

    if foci:
        sink("ds_foci_dseg", "foci_dseg", desc="foci", suffix="dseg", compress=True)
        sink("ds_foci_lookup", "foci_lookup", desc="foci", suffix="dseg")
        sink("ds_foci_table", "foci_table", "foci_meta", desc="foci", suffix="Chimap")
    if veins:
        sink("ds_veins_mask", "veins_mask", desc="veins", suffix="mask", compress=True)
        sink("ds_veins_table", "veins_table", "veins_meta", desc="veins", suffix="Chimap")
    if lesions:
        sink("ds_lesions_table", "lesions_table", "lesions_meta", desc="lesions", suffix="Chimap")
    return workflow
