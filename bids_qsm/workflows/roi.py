"""Region statistics of one run: its segmentation on the MEGRE grid, a table per label.

The labels come first (the 'labels' reference needs them), the table last (it needs the
Chimap), so they are two nodes on either side of the run's QSM workflow.
"""

from nipype.pipeline import engine as pe

from bids_qsm.interfaces.roi import LabelsOnGrid, RoiStats


def init_labels_node(*, segmentation, registration, mem_gb, omp_nthreads=1, name="labels"):
    """Node bringing `segmentation` onto the MEGRE grid (registering its T1w if needed)."""
    labels = pe.Node(
        LabelsOnGrid(
            dseg=str(segmentation.dseg), names=segmentation.names, lookup=segmentation.lookup,
            kind=registration, omp_nthreads=omp_nthreads,
        ),
        name=name, mem_gb=mem_gb, n_procs=omp_nthreads,
    )  # fmt:skip
    if segmentation.needs_registration:
        labels.inputs.reference = str(segmentation.reference)
    return labels


def init_roistats_node(*, segmentation, erode_voxels, mem_gb, name="roistats"):
    """Node tabulating chi per label inside the QSM mask."""
    return pe.Node(
        RoiStats(dseg=str(segmentation.dseg), names=segmentation.names,
                 erode_voxels=erode_voxels),
        name=name, mem_gb=mem_gb,
    )  # fmt:skip


def roi_description(segmentation, *, registration, erode_voxels):
    """Methods text of the region statistics."""
    moved = (
        f" Its T1w reference was registered to the first-echo magnitude ({registration}, "
        "mutual information) and the labels were resampled by nearest neighbour."
        if segmentation.needs_registration
        else ""
    )
    eroded = f" Each label was eroded by {erode_voxels} voxel(s) first." if erode_voxels else ""
    return (
        f" Susceptibility statistics were computed per label of the segmentation "
        f"{segmentation.dseg.name}.{moved}{eroded}"
    )
