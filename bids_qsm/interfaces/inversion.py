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
from bids_qsm.qsm.units import hz_to_ppm

_EDGE = inspect.signature(reliable_field).parameters


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


class RemoveBackground(SimpleInterface):
    """Local (tissue) field in ppm from the total field in Hz."""

    input_spec = _BackgroundInputSpec
    output_spec = _BackgroundOutputSpec

    def _run_interface(self, runtime):
        field_hz, ref = load(self.inputs.field)
        brain = mask = load_mask(self.inputs.mask)
        reliability = {}
        if self.inputs.noise:
            spacing = np.diff(sorted(self.inputs.echo_times)) if self.inputs.echo_times else []
            # With fewer than 3 echoes the noise map may be relative only (combine.py): then
            # only the half-wrap limits the deviation from the neighbours.
            deviation = self.inputs.deviation_factor if len(spacing) >= 2 else 0.0
            (mask, _, edge_warnings) = run_stage(
                reliable_field, mask, field_hz, load(self.inputs.noise)[0],
                data={"echo_spacing_s": float(min(spacing)) if len(spacing) else None},
                params={"noise_factor": self.inputs.noise_factor, "deviation_factor": deviation},
            )  # fmt:skip
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
        self._results["params"] = {"method": self.inputs.method, **params, **reliability}
        self._results["warnings"] = warnings
        return runtime


class _InvertInputSpec(_StageInputSpec):
    local_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the field is valid on")
    brain_mask = File(exists=True, desc="brain mask, for methods that extend chi beyond `mask`")
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
