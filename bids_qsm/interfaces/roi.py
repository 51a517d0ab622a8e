"""Interfaces of region statistics: a segmentation onto the MEGRE grid, per-label chi tables."""

import json
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_qsm.interfaces.nifti import geometry, load, load_mask, save_like
from bids_qsm.qsm.roi import roi_statistics
from bids_qsm.segmentation import (
    Segmentation,
    check_coverage,
    labels_on_grid,
    write_itk_transform,
    write_lookup,
    write_roi_table,
)


class _LabelsOnGridInputSpec(BaseInterfaceInputSpec):
    dseg = File(exists=True, mandatory=True, desc="discrete segmentation")
    reference = File(exists=True, desc="T1w the segmentation lives on (when not on the grid)")
    names = traits.Dict(traits.Int, traits.Str, mandatory=True, desc="{index: name}")
    lookup = traits.Str(mandatory=True, desc="where the names come from")
    magnitude = File(exists=True, mandatory=True, desc="first-echo magnitude (or real part)")
    imag = File(exists=True, desc="first-echo imaginary part, for complex input")
    kind = traits.Enum("rigid", "affine", usedefault=True, desc="registration transform")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads for the registration")


class _LabelsOnGridOutputSpec(TraitedSpec):
    labels = File(exists=True, desc="labels on the MEGRE grid")
    lookup_file = File(exists=True, desc="dseg.tsv look-up of the labels")
    transform = File(desc="ITK text transform, MEGRE to T1w (registered segmentations only)")
    meta = traits.Dict(desc="sidecar of the labels")


class LabelsOnGrid(SimpleInterface):
    """Bring a segmentation onto the MEGRE grid (registering its T1w if it lives elsewhere)."""

    input_spec = _LabelsOnGridInputSpec
    output_spec = _LabelsOnGridOutputSpec

    def _run_interface(self, runtime):
        magnitude, ref = load(self.inputs.magnitude)
        if isdefined(self.inputs.imag):
            magnitude = np.hypot(magnitude, load(self.inputs.imag)[0])
        reference = self.inputs.reference if isdefined(self.inputs.reference) else None
        segmentation = Segmentation(
            Path(self.inputs.dseg), dict(self.inputs.names), self.inputs.lookup,
            Path(reference) if reference else None,
        )  # fmt:skip
        labels, transform = labels_on_grid(
            segmentation, magnitude=magnitude, target_affine=ref.affine, kind=self.inputs.kind,
            num_threads=self.inputs.omp_nthreads,
        )  # fmt:skip
        self._results["labels"] = save_like(ref, labels, runtime.cwd, "labels", dtype=np.int16)
        lookup = write_lookup(Path(runtime.cwd) / "dseg.tsv", segmentation.names)
        self._results["lookup_file"] = str(lookup)
        self._results["meta"] = {
            "Sources": [str(self.inputs.dseg)] + ([str(reference)] if reference else []),
            "LookUpTable": self.inputs.lookup,
            "Registration": self.inputs.kind if transform is not None else "none",
        }
        if transform is not None:
            path = write_itk_transform(Path(runtime.cwd) / "xfm.txt", transform)
            self._results["transform"] = str(path)
        return runtime


class _RoiStatsInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the map is valid on")
    labels = File(exists=True, mandatory=True, desc="labels on the grid of the map")
    dseg = File(exists=True, mandatory=True, desc="the segmentation the labels come from")
    names = traits.Dict(traits.Int, traits.Str, mandatory=True, desc="{index: name}")
    erode_voxels = traits.Int(0, usedefault=True, desc="erode each label first (voxels)")
    labels_meta = traits.Dict(desc="sidecar of the labels (source, registration)")


class _RoiStatsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="desc-roistats_Chimap.tsv")
    meta = traits.Dict(desc="its sidecar")


class RoiStats(SimpleInterface):
    """One row of chi statistics (ppm) per label present inside the QSM mask."""

    input_spec = _RoiStatsInputSpec
    output_spec = _RoiStatsOutputSpec

    def _run_interface(self, runtime):
        chi, ref = load(self.inputs.chimap)
        mask = load_mask(self.inputs.mask)
        labels = load(self.inputs.labels, dtype=np.int32)[0]
        coverage = check_coverage(labels, mask, self.inputs.dseg)
        rows = roi_statistics(
            chi, mask, labels,
            voxel_size=geometry(ref)["voxel_size"], names=dict(self.inputs.names),
            erode_voxels=self.inputs.erode_voxels,
        )  # fmt:skip
        sidecar = {
            "ErodeVoxels": self.inputs.erode_voxels,
            "LabelsKeptUneroded": [row["index"] for row in rows if not row["eroded"]],
            "MaskCoverage": round(coverage, 4),
            "LabelCoverage": {row["index"]: round(row["coverage"], 4) for row in rows},
            **self.inputs.labels_meta,
        }
        path = write_roi_table(Path(runtime.cwd) / "roistats.tsv", rows, sidecar=sidecar)
        self._results["out_file"] = str(path)
        self._results["meta"] = json.loads(path.with_suffix(".json").read_text())
        return runtime
