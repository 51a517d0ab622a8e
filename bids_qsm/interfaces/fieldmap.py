"""Interfaces of the field-mapping half of a run: phase scaling, mask, unwrapping, field, R2*."""

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_qsm.interfaces.nifti import (
    captured_warnings,
    check_phase_is_not_magnitude,
    check_volume,
    geometry,
    load,
    load_input,
    load_mask,
    run_stage,
    save_like,
)
from bids_qsm.qsm.combine import COMBINERS
from bids_qsm.qsm.mask import MASKS
from bids_qsm.qsm.phase import PHASE_UNITS, complex_to_polar, scale_phase
from bids_qsm.qsm.relaxometry import RELAXOMETRY, t2star_from_r2star
from bids_qsm.qsm.unwrap import UNWRAPPERS


class _StageInputSpec(BaseInterfaceInputSpec):
    params = traits.Dict(usedefault=True, desc="method parameters other than the defaults")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads for numba kernels")


class _StageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the stage's result")
    params = traits.Dict(desc="method and every parameter it ran with")
    warnings = traits.List(traits.Str, desc="warnings the method logged")


class _EchoStageInputSpec(_StageInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D magnitude, echoes last")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")


def _echo_data(inputs, ref):
    """What a stage on a run's echoes may use: magnitude, mask, echo times, grid geometry."""
    return {
        "magnitude": load(inputs.magnitude)[0],
        "mask": load_mask(inputs.mask),
        "te": np.asarray(inputs.echo_times),
        **geometry(ref),
    }


class _LoadEchoesInputSpec(BaseInterfaceInputSpec):
    magnitude = InputMultiObject(File(exists=True), desc="magnitude per echo")
    phase = InputMultiObject(File(exists=True), desc="phase per echo")
    real = InputMultiObject(File(exists=True), desc="real part per echo (instead of mag/phase)")
    imag = InputMultiObject(File(exists=True), desc="imaginary part per echo")
    units = traits.Enum(*PHASE_UNITS, usedefault=True, desc="phase scaling; auto reads sidecar")
    sidecar_units = traits.Str("missing", usedefault=True, desc="Units of the phase sidecar")
    sign = traits.Enum(1, -1, usedefault=True, desc="-1 flips the phase convention")


class _LoadEchoesOutputSpec(TraitedSpec):
    magnitude = File(exists=True, desc="4-D magnitude, echoes last")
    phase = File(exists=True, desc="4-D phase (rad), echoes last")
    params = traits.Dict(desc="how the phase was scaled")
    warnings = traits.List(traits.Str, desc="warnings about the phase scaling")


class LoadEchoes(SimpleInterface):
    """Stack a run's echoes into 4-D magnitude and phase (rad) in the project's sign convention."""

    input_spec = _LoadEchoesInputSpec
    output_spec = _LoadEchoesOutputSpec

    def _run_interface(self, runtime):
        self._results["warnings"] = []
        units = self.inputs.units
        if units == "auto" and self.inputs.sidecar_units in PHASE_UNITS:
            units = self.inputs.sidecar_units
        if self.inputs.real:
            pairs = [
                complex_to_polar(load_input(r, part="real")[0], load_input(i, part="imag")[0])
                for r, i in zip(self.inputs.real, self.inputs.imag, strict=True)
            ]
            magnitude = np.stack([m for m, _ in pairs], axis=-1)
            phase = np.stack([p for _, p in pairs], axis=-1)
            units = "rad"
            ref = load(self.inputs.real[0])[1]
        else:
            with captured_warnings() as warnings:
                magnitudes, phases = [], []
                for mag_file, phase_file in zip(
                    self.inputs.magnitude, self.inputs.phase, strict=True
                ):
                    magnitudes.append(load_input(mag_file, part="mag")[0])
                    # A magnitude in the phase's place is named as such before its values are
                    # judged against radians (which would blame the sidecar instead); only that
                    # judgement depends on the units, so only then is the volume checked again.
                    stored = load_input(phase_file, part="phase", units="arbitrary")[0]
                    check_phase_is_not_magnitude(
                        stored, magnitudes[-1], path=phase_file, magnitude_path=mag_file
                    )
                    if units == "rad":
                        check_volume(stored, path=phase_file, part="phase", units=units)
                    phases.append(scale_phase(stored, units=units))
                magnitude, phase = np.stack(magnitudes, axis=-1), np.stack(phases, axis=-1)
            self._results["warnings"] = sorted(set(warnings), key=warnings.index)
            ref = load(self.inputs.phase[0])[1]
        phase *= self.inputs.sign
        self._results["magnitude"] = save_like(ref, magnitude, runtime.cwd, "magnitude")
        self._results["phase"] = save_like(ref, phase, runtime.cwd, "phase")
        self._results["params"] = {"units": units, "sign": self.inputs.sign}
        return runtime


class _BrainMaskInputSpec(_StageInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D magnitude")
    phase = File(exists=True, desc="4-D phase (rad), for phase-quality refinement")
    echo_times = traits.List(traits.Float, desc="echo times (s)")
    method = traits.Enum(*MASKS, usedefault=True, desc="masking method")
    mask_file = File(exists=True, desc="the user's mask on the same grid, used instead")


class BrainMask(SimpleInterface):
    """Brain mask from the magnitude (and phase quality, if the method uses it), or the user's."""

    input_spec = _BrainMaskInputSpec
    output_spec = _StageOutputSpec

    def _run_interface(self, runtime):
        magnitude, ref = load(self.inputs.magnitude)
        if self.inputs.mask_file:
            mask = load_mask(self.inputs.mask_file)
            if not mask.any():
                raise RuntimeError(f"{self.inputs.mask_file}: the mask is empty")
            self._results["out_file"] = save_like(ref, mask, runtime.cwd, "mask", dtype=np.uint8)
            self._results["params"] = {"method": "file", "file": self.inputs.mask_file}
            self._results["warnings"] = []
            return runtime
        data = {
            "phase": load(self.inputs.phase)[0] if self.inputs.phase else None,
            "te": np.asarray(self.inputs.echo_times) if self.inputs.echo_times else None,
            **geometry(ref),
        }
        mask, params, warnings = run_stage(
            MASKS[self.inputs.method], magnitude, data=data, params=self.inputs.params,
            nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        if not mask.any():
            raise RuntimeError(f"{self.inputs.method} mask is empty: no signal in the magnitude")
        self._results["out_file"] = save_like(ref, mask, runtime.cwd, "mask", dtype=np.uint8)
        self._results["params"] = {"method": self.inputs.method, **params}
        self._results["warnings"] = warnings
        return runtime


class _UnwrapInputSpec(_EchoStageInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D wrapped phase (rad)")
    method = traits.Enum(*UNWRAPPERS, usedefault=True, desc="unwrapping method")


class Unwrap(SimpleInterface):
    """Spatial (and temporal) unwrapping of every echo's phase."""

    input_spec = _UnwrapInputSpec
    output_spec = _StageOutputSpec

    def _run_interface(self, runtime):
        phase, ref = load(self.inputs.phase)
        unwrapped, params, warnings = run_stage(
            UNWRAPPERS[self.inputs.method], phase, data=_echo_data(self.inputs, ref),
            params=self.inputs.params, nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, unwrapped, runtime.cwd, "unwrapped")
        self._results["params"] = {"method": self.inputs.method, **params}
        self._results["warnings"] = warnings
        return runtime


class _FitFieldInputSpec(_EchoStageInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D unwrapped phase (rad)")
    method = traits.Enum(*COMBINERS, usedefault=True, desc="echo combination")


class _FitFieldOutputSpec(_StageOutputSpec):
    noise = File(exists=True, desc="standard error of the field (Hz)")


class FitField(SimpleInterface):
    """The field (Hz) from the phase evolution over echo times, with its noise map."""

    input_spec = _FitFieldInputSpec
    output_spec = _FitFieldOutputSpec

    def _run_interface(self, runtime):
        phase, ref = load(self.inputs.phase)
        (field, noise), params, warnings = run_stage(
            COMBINERS[self.inputs.method], phase, data=_echo_data(self.inputs, ref),
            params=self.inputs.params, nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        self._results["out_file"] = save_like(ref, field, runtime.cwd, "field_hz")
        self._results["noise"] = save_like(ref, noise, runtime.cwd, "noise_hz")
        self._results["params"] = {"method": self.inputs.method, **params}
        self._results["warnings"] = warnings
        return runtime


class _R2StarInputSpec(_EchoStageInputSpec):
    method = traits.Enum(*RELAXOMETRY, usedefault=True, desc="R2* fit")


class _R2StarOutputSpec(_StageOutputSpec):
    t2star = File(exists=True, desc="T2* map (s)")


class R2Star(SimpleInterface):
    """R2* (1/s) and T2* (s) maps from the magnitude decay."""

    input_spec = _R2StarInputSpec
    output_spec = _R2StarOutputSpec

    def _run_interface(self, runtime):
        data = _echo_data(self.inputs, load(self.inputs.magnitude)[1])
        magnitude = data.pop("magnitude")
        r2star, params, warnings = run_stage(
            RELAXOMETRY[self.inputs.method], magnitude, data=data, params=self.inputs.params,
            nthreads=self.inputs.omp_nthreads,
        )  # fmt:skip
        ref = load(self.inputs.mask)[1]
        self._results["out_file"] = save_like(ref, r2star, runtime.cwd, "r2star")
        self._results["t2star"] = save_like(ref, t2star_from_r2star(r2star), runtime.cwd, "t2star")
        self._results["params"] = {"method": self.inputs.method, **params}
        self._results["warnings"] = warnings
        return runtime
