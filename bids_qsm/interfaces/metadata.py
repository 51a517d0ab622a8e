"""The sidecars of a run's derivatives, assembled from what every stage reports it did."""

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_qsm.data import load_json

_STAGES = {
    "phase_params": "PhaseScaling",
    "mask_params": "Masking",
    "unwrap_params": "Unwrapping",
    "combine_params": "EchoCombination",
    "relaxometry_params": "Relaxometry",
    "background_params": "BackgroundRemoval",
    "inversion_params": "DipoleInversion",
    "reference_params": "Referencing",
}


class _SidecarsInputSpec(BaseInterfaceInputSpec):
    sources = traits.List(traits.Str, mandatory=True, desc="bids:raw: URIs of the inputs")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    field_strength = traits.Float(mandatory=True, desc="B0 (T)")
    phase_params = traits.Dict(mandatory=True)
    mask_params = traits.Dict(mandatory=True)
    unwrap_params = traits.Dict(mandatory=True)
    combine_params = traits.Dict(mandatory=True)
    relaxometry_params = traits.Dict(desc="absent for a single echo (no R2*)")
    background_params = traits.Dict(mandatory=True)
    inversion_params = traits.Dict(mandatory=True)
    reference_params = traits.Dict(mandatory=True)
    swi_params = traits.Dict(mandatory=True)
    warnings = traits.List(traits.Str, desc="warnings of every stage")


class _SidecarsOutputSpec(TraitedSpec):
    chimap = traits.Dict(desc="sidecar of the susceptibility map")
    mask = traits.Dict(desc="sidecar of the brain mask")
    relaxometry = traits.Dict(desc="sidecar of the R2* and T2* maps")
    fields = traits.Dict(desc="sidecar of the total and local field maps")
    swi = traits.Dict(desc="sidecar of the SWI and its minIP")


class Sidecars(SimpleInterface):
    """JSON sidecars that let a map be reproduced: sources, acquisition, every stage's settings."""

    input_spec = _SidecarsInputSpec
    output_spec = _SidecarsOutputSpec

    def _run_interface(self, runtime):
        cites = load_json("citations.json")
        stages = {
            key: getattr(self.inputs, trait)
            for trait, key in _STAGES.items()
            if isdefined(getattr(self.inputs, trait))
        }
        inversion = stages["DipoleInversion"]
        reference = stages["Referencing"]["method"]
        warnings = list(dict.fromkeys(self.inputs.warnings))
        common = {
            "Sources": list(self.inputs.sources),
            "MagneticFieldStrength": self.inputs.field_strength,
            "EchoTime": list(self.inputs.echo_times),
            **({"ProcessingWarnings": warnings} if warnings else {}),
        }
        name, citation = cites["inversion"][inversion["method"]]
        self._results["chimap"] = {
            "Units": "ppm",
            "SkullStripped": True,
            "EstimationAlgorithm": name,
            "EstimationReference": citation,
            **common,
            "B0Direction": inversion["b0_direction"],
            "ReferenceRegion": cites["reference"][reference][0],
            **stages,
        }
        self._results["mask"] = {
            "Type": "Brain",
            **common,
            "Masking": stages["Masking"],
            "BackgroundRemoval": stages["BackgroundRemoval"],
        }
        if "Relaxometry" in stages:
            relax_name, relax_cite = cites["relaxometry"][stages["Relaxometry"]["method"]]
            self._results["relaxometry"] = {
                "SkullStripped": True,
                "EstimationAlgorithm": relax_name,
                "EstimationReference": relax_cite,
                **common,
                "Masking": stages["Masking"],
                "Relaxometry": stages["Relaxometry"],
            }
        self._results["fields"] = {
            **common,
            **{k: stages[k] for k in ("Masking", "Unwrapping", "EchoCombination")},
            "BackgroundRemoval": stages["BackgroundRemoval"],
        }
        self._results["swi"] = {
            "SkullStripped": True,
            **common,
            "SWI": self.inputs.swi_params,
            "BackgroundRemoval": stages["BackgroundRemoval"],
        }
        return runtime
