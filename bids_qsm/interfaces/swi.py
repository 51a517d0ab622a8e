"""Interface of the susceptibility-weighted image and its minimum intensity projection."""

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, traits

from bids_qsm.interfaces.fieldmap import _EchoStageInputSpec, _StageOutputSpec
from bids_qsm.interfaces.nifti import geometry, load, run_stage, save_like
from bids_qsm.qsm.swi import minimum_intensity_projection, swi
from bids_qsm.qsm.units import ppm_to_hz


class _SWIInputSpec(_EchoStageInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    field_strength = traits.Float(mandatory=True, desc="B0 (T)")
    slab_mm = traits.Float(16.0, usedefault=True, desc="thickness of the minIP slab (mm)")


class _SWIOutputSpec(_StageOutputSpec):
    minip = File(exists=True, desc="minimum intensity projection of the SWI over a slab")


class SWI(SimpleInterface):
    """SWI from the echoes' magnitude and the local field, and its sliding-slab minIP."""

    input_spec = _SWIInputSpec
    output_spec = _SWIOutputSpec

    def _run_interface(self, runtime):
        field_ppm, ref = load(self.inputs.local_field)
        mask = load(self.inputs.mask)[0] > 0
        grid = geometry(ref)
        data = {
            "mask": mask,
            "te": np.asarray(self.inputs.echo_times),
            "voxel_size": grid["voxel_size"],
        }
        image, params, warnings = run_stage(
            swi, load(self.inputs.magnitude)[0], ppm_to_hz(field_ppm, self.inputs.field_strength),
            data=data, params=self.inputs.params, nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        minip = minimum_intensity_projection(
            image, voxel_size=grid["voxel_size"], slab_mm=self.inputs.slab_mm, mask=mask
        )
        self._results["out_file"] = save_like(ref, image, runtime.cwd, "swi")
        self._results["minip"] = save_like(ref, minip, runtime.cwd, "minip")
        self._results["params"] = {**params, "minip_slab_mm": self.inputs.slab_mm}
        self._results["warnings"] = warnings
        return runtime
