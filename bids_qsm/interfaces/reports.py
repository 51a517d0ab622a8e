"""Interface that draws a run's report figures."""

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_qsm.interfaces.nifti import geometry, load
from bids_qsm.reports.figures import plot_chimap, plot_map, plot_mask_outline, plot_swi


class _RunFiguresInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D magnitude")
    brain_mask = File(exists=True, mandatory=True, desc="mask of the field map")
    mask = File(exists=True, mandatory=True, desc="mask of the local field and Chimap")
    field = File(exists=True, mandatory=True, desc="total field (Hz)")
    local_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    r2star = File(exists=True, desc="R2* (1/s); absent for a single echo")
    swi = File(exists=True, mandatory=True, desc="susceptibility-weighted image")
    minip = File(exists=True, mandatory=True, desc="minimum intensity projection of the SWI")


class _RunFiguresOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="figures, in the order of `keys`")
    keys = traits.List(traits.Str, desc="what each figure shows (its desc- entity)")


class RunFigures(SimpleInterface):
    """The report's figures of one run: mask, fields, Chimap, R2*, SWI and minIP."""

    input_spec = _RunFiguresInputSpec
    output_spec = _RunFiguresOutputSpec

    def _run_interface(self, runtime):
        magnitude, ref = load(self.inputs.magnitude)
        voxel = geometry(ref)["voxel_size"]
        brain = load(self.inputs.brain_mask)[0] > 0
        mask = load(self.inputs.mask)[0] > 0

        def out(key):
            return f"{runtime.cwd}/{key}.svg"

        files = {
            "mask": plot_mask_outline(magnitude, brain, out("mask"), voxel_size=voxel),
            "totalfield": plot_map(
                load(self.inputs.field)[0], out("totalfield"), voxel_size=voxel, mask=brain,
                cmap="RdBu_r", label="total field (Hz)", symmetric=True,
            ),
            "localfield": plot_map(
                load(self.inputs.local_field)[0], out("localfield"), voxel_size=voxel,
                mask=mask, cmap="RdBu_r", label="local field (ppm)", symmetric=True,
            ),
            "chimap": plot_chimap(load(self.inputs.chimap)[0], out("chimap"), voxel_size=voxel,
                                  mask=mask),
            "swi": plot_swi(load(self.inputs.swi)[0], load(self.inputs.minip)[0], out("swi"),
                            voxel_size=voxel, mask=mask),
        }  # fmt:skip
        if self.inputs.r2star:
            files["r2star"] = plot_map(
                load(self.inputs.r2star)[0], out("r2star"), voxel_size=voxel, mask=brain,
                cmap="magma", label="R2* (1/s)",
            )  # fmt:skip
        self._results["keys"] = list(files)
        self._results["out_files"] = [str(f.path) for f in files.values()]
        return runtime
