"""Interfaces of the inversion half of a run: background removal, dipole inversion, reference."""

import inspect

import numpy as np
from nipype.interfaces.base import File, SimpleInterface, traits

from bids_qsm.interfaces.fieldmap import _StageInputSpec, _StageOutputSpec
from bids_qsm.interfaces.nifti import geometry, load, load_mask, run_stage, save_like
from bids_qsm.qsm.background import BACKGROUND
from bids_qsm.qsm.invert import INVERSIONS
from bids_qsm.qsm.mask import reliable_field
from bids_qsm.qsm.reference import REFERENCES
from bids_qsm.qsm.two_pass import combine as combine_passes
from bids_qsm.qsm.two_pass import hollow_mask
from bids_qsm.qsm.units import hz_to_ppm

_EDGE = inspect.signature(reliable_field).parameters


def _reliable_edge(mask, field_hz, noise_hz, inputs):
    """`mask.reliable_field` with an interface's echo_times, noise_factor and deviation_factor:
    (the mask without its unreliable edge, the deviation factor used, warnings)."""
    spacing = np.diff(sorted(inputs.echo_times)) if inputs.echo_times else []
    # With fewer than 3 echoes the noise map may be relative only (combine.py): then only the
    # half-wrap limits the deviation from the neighbours.
    deviation = inputs.deviation_factor if len(spacing) >= 2 else 0.0
    reliable, _, warnings = run_stage(
        reliable_field, mask, field_hz, noise_hz,
        data={"echo_spacing_s": float(min(spacing)) if len(spacing) else None},
        params={"noise_factor": inputs.noise_factor, "deviation_factor": deviation},
    )  # fmt:skip
    return reliable, deviation, warnings


class _BackgroundInputSpec(_StageInputSpec):
    field = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    field_strength = traits.Float(mandatory=True, desc="B0 (T)")
    method = traits.Enum(*BACKGROUND, usedefault=True, desc="background field removal")
    noise = File(
        exists=True,
        desc="standard error of the field (Hz): edge voxels whose field "
        "cannot be trusted are left out of the mask first (`mask.reliable_field`)",
    )
    echo_times = traits.List(traits.Float, desc="echo times (s), for the wrap test at the edge")
    noise_factor = traits.Float(
        _EDGE["noise_factor"].default,
        usedefault=True,
        desc="edge voxels noisier than this times the median are dropped",
    )
    deviation_factor = traits.Float(
        _EDGE["deviation_factor"].default,
        usedefault=True,
        desc="edge voxels whose field departs from their neighbours' median by more than this "
        "times the median noise (or half a wrap) are dropped",
    )


class _BackgroundOutputSpec(_StageOutputSpec):
    mask = File(exists=True, desc="mask the local field is valid on")
    method_mask = File(exists=True, desc="mask the method was given: the brain's, less its "
                       "unreliable edge when the noise is known")  # fmt: skip


class RemoveBackground(SimpleInterface):
    """Local (tissue) field in ppm from the total field in Hz."""

    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        field_hz, ref = load(self.inputs.field)
        brain = mask = load_mask(self.inputs.mask)
        reliability = {}
        if self.inputs.noise:
            mask, deviation, edge_warnings = _reliable_edge(
                mask, field_hz, load(self.inputs.noise)[0], self.inputs
            )
            reliability = {
                "unreliable_edge": {
                    "noise_factor": self.inputs.noise_factor,
                    "deviation_factor": deviation,
                    "voxels_left_out": int(brain.sum() - mask.sum()),
                }
            }
        (local, valid), params, warnings = run_stage(
            BACKGROUND[self.inputs.method],
            hz_to_ppm(field_hz, self.inputs.field_strength),
            mask,
            data=geometry(ref), params=self.inputs.params, nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        if self.inputs.noise:
            warnings = [*edge_warnings, *warnings]
        if not valid.any():
            raise RuntimeError(
                f"{self.inputs.method} eroded the whole mask: the brain is too small"
            )
        self._results["out_file"] = save_like(ref, local, runtime.cwd, "local_field_ppm")
        self._results["mask"] = save_like(ref, valid, runtime.cwd, "mask", dtype=np.uint8)
        self._results["method_mask"] = save_like(
            ref, mask, runtime.cwd, "method_mask", dtype=np.uint8
        )
        self._results["params"] = {"method": self.inputs.method, **params, **reliability}
        self._results["warnings"] = warnings
        return runtime


class _InvertInputSpec(_StageInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the field is valid on")
    brain_mask = File(exists=True, desc="brain mask, for methods that extend chi beyond `mask`")
    lbv_mask = File(
        exists=True,
        desc="where the local field came from LBV: the mask it took its boundary from, for "
        "methods that give back the brain's own field LBV removed with it (TFI)",
    )
    noise = File(exists=True, desc="standard error of the total field (Hz), from the echo fit")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    field_strength = traits.Float(mandatory=True, desc="B0 (T)")
    method = traits.Enum(*INVERSIONS, usedefault=True, desc="dipole inversion")


class _InvertOutputSpec(_StageOutputSpec):
    mask = File(exists=True, desc="mask of the susceptibility map")


class Invert(SimpleInterface):
    """Dipole inversion of a local field map into susceptibility (ppm)."""

    input_spec = _InvertInputSpec
    output_spec = _InvertOutputSpec

    def _run_interface(self, runtime):
        field, ref = load(self.inputs.local_field)
        grid = geometry(ref)
        # Methods that regularise phase (TGV) weigh it at the noise-equivalent echo time of
        # the multi-echo fit, so that their strength matches the field's noise.
        acquisition = {
            "te": float(np.sqrt(np.sum(np.square(self.inputs.echo_times)))),
            "b0_tesla": self.inputs.field_strength,
        }
        if self.inputs.brain_mask:
            acquisition["brain"] = load_mask(self.inputs.brain_mask)
        if self.inputs.lbv_mask:
            acquisition["lbv_mask"] = load_mask(self.inputs.lbv_mask)
        valid = load_mask(self.inputs.mask)
        if self.inputs.noise:
            # Methods whose strength follows the data's noise (TGV) take its typical level.
            # With fewer than 3 echoes the noise map may be relative only (combine.py).
            noise_hz = load(self.inputs.noise)[0][valid]
            typical = float(np.median(noise_hz)) if noise_hz.size else 0.0
            if len(self.inputs.echo_times) >= 3 and np.isfinite(typical) and typical > 0:
                acquisition["noise_ppm"] = float(hz_to_ppm(typical, self.inputs.field_strength))
        # What the method measured about its run (e.g. TGV's iterations) goes beside its settings.
        report = {}
        chi, params, warnings = run_stage(
            INVERSIONS[self.inputs.method], field, valid,
            data={**grid, **acquisition, "report": report}, params=self.inputs.params,
            nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, chi, runtime.cwd, "chi")
        self._results["mask"] = save_like(
            ref, valid | (chi != 0), runtime.cwd, "chi_mask", dtype=np.uint8
        )
        self._results["params"] = {
            "method": self.inputs.method,
            **params,
            **report,
            "b0_direction": list(grid["b0_dir"]),
        }
        self._results["warnings"] = warnings
        return runtime


class _ReferenceInputSpec(_StageInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask of the map")
    labels = File(exists=True, desc="labels on the grid of the map (reference 'labels')")
    method = traits.Enum(*REFERENCES, usedefault=True, desc="reference region")


class Reference(SimpleInterface):
    """Susceptibility relative to a reference region."""

    input_spec = _ReferenceInputSpec
    output_spec = _StageOutputSpec

    def _run_interface(self, runtime):
        chi, ref = load(self.inputs.chimap)
        chi, params, warnings = run_stage(
            REFERENCES[self.inputs.method], chi, load_mask(self.inputs.mask),
            data={"labels": load(self.inputs.labels, np.int32)[0] if self.inputs.labels else None},
            params=self.inputs.params,
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, chi, runtime.cwd, "chi_referenced")
        self._results["params"] = {"method": self.inputs.method, **params}
        self._results["warnings"] = warnings
        return runtime


class _HollowMaskInputSpec(_StageInputSpec):
    field = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    noise = File(exists=True, mandatory=True, desc="standard error of the field (Hz)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    noise_factor = traits.Float(
        _EDGE["noise_factor"].default, usedefault=True, desc="as in `RemoveBackground`"
    )
    deviation_factor = traits.Float(
        _EDGE["deviation_factor"].default, usedefault=True, desc="as in `RemoveBackground`"
    )


class HollowMask(SimpleInterface):
    """The first pass's mask of two-pass artefact reduction: the brain mask less its unreliable
    edge (as `RemoveBackground` drops it) and less the unreliable voxels inside, holes kept."""

    input_spec = _HollowMaskInputSpec
    output_spec = _StageOutputSpec

    def _run_interface(self, runtime):
        field_hz, ref = load(self.inputs.field)
        noise_hz = load(self.inputs.noise)[0]
        brain = load_mask(self.inputs.mask)
        # The edge as background removal of the second pass leaves it (`RemoveBackground`).
        edge, _, edge_warnings = _reliable_edge(brain, field_hz, noise_hz, self.inputs)
        hollow, params, warnings = run_stage(
            hollow_mask, edge, field_hz, noise_hz,
            data={"echo_time_s": max(self.inputs.echo_times)}, params=self.inputs.params,
            nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, hollow, runtime.cwd, "hollow_mask", np.uint8)
        self._results["params"] = {**params, "unreliable_voxels": int(edge.sum() - hollow.sum())}
        self._results["warnings"] = [*edge_warnings, *warnings]
        return runtime


class _TwoPassInputSpec(_StageInputSpec):
    chi_pass1 = File(exists=True, mandatory=True, desc="susceptibility of pass 1 (ppm)")
    valid_pass1 = File(exists=True, mandatory=True, desc="where pass 1's local field is valid")
    chi_pass2 = File(exists=True, mandatory=True, desc="susceptibility of pass 2 (ppm)")
    mask_pass2 = File(exists=True, mandatory=True, desc="support of pass 2's map")
    inversion_params = traits.Dict(mandatory=True, desc="settings of the inversion (pass 2)")
    hollow_params = traits.Dict(mandatory=True, desc="settings of pass 1's mask (`HollowMask`)")


class _TwoPassOutputSpec(_StageOutputSpec):
    mask = File(exists=True, desc="mask of the susceptibility map")


class TwoPass(SimpleInterface):
    """Two-pass artefact reduction: pass 1's map where it is valid, pass 2's elsewhere; the
    inversion's settings with a `two_pass` entry (its settings and how many voxels came from
    pass 2)."""

    input_spec = _TwoPassInputSpec
    output_spec = _TwoPassOutputSpec

    def _run_interface(self, runtime):
        chi_pass2, ref = load(self.inputs.chi_pass2)
        valid_pass1 = load_mask(self.inputs.valid_pass1)
        mask_pass2 = load_mask(self.inputs.mask_pass2)
        (chi, mask, offset), _, warnings = run_stage(
            combine_passes, load(self.inputs.chi_pass1)[0], valid_pass1, chi_pass2, mask_pass2,
            data={}, params={},
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, chi, runtime.cwd, "chi_two_pass")
        self._results["mask"] = save_like(ref, mask, runtime.cwd, "chi_mask", dtype=np.uint8)
        self._results["params"] = {
            **self.inputs.inversion_params,
            "two_pass": {
                **self.inputs.hollow_params,
                "voxels_from_pass2": int((mask & ~valid_pass1).sum()),
                "pass2_offset_ppm": offset,
            },
        }
        self._results["warnings"] = warnings
        return runtime
