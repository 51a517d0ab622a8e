"""Reproducing a map from its sidecar: the stage sections of a Chimap JSON back into settings."""

import json
from pathlib import Path

# sidecar section -> (Workflow settings attribute of the method, key of Workflow.parameters)
SIDECAR_STAGES = {
    "Masking": ("mask", "mask"),
    "Unwrapping": ("unwrap", "unwrap"),
    "EchoCombination": ("combine", "combine"),
    "Relaxometry": ("relaxometry", "relaxometry"),
    "BackgroundRemoval": ("background", "background"),
    "DipoleInversion": ("inversion", "inversion"),
    "Referencing": ("reference", "reference"),
}
# b0_direction is read off the data's affine; iterations_run and boundary_pass_iterations are
# what the iterative inversions measured, not settings;
# unreliable_edge is what background removal left out of the mask (its thresholds are fixed);
# two_pass (in DipoleInversion) is the two-pass artefact reduction's own stage
_NOT_SETTINGS = ("method", "b0_direction", "iterations_run", "boundary_pass_iterations",
                 "unreliable_edge", "two_pass")  # fmt: skip


def apply_sidecar(workflow, sidecar):
    """Set `workflow` (a config.Workflow) to the methods and parameters a Chimap sidecar lists.

    Raises ValueError naming the sidecar when it lacks a stage section.
    """
    path = Path(sidecar)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the sidecar ({err})") from None
    # a single-echo run has no R2*, hence no Relaxometry section
    required = ("PhaseScaling", *(key for key in SIDECAR_STAGES if key != "Relaxometry"))
    missing = [key for key in required if key not in meta]
    if missing:
        raise ValueError(f"{path}: not a bids_qsm Chimap sidecar (no {', '.join(missing)})")
    workflow.phase_units = meta["PhaseScaling"]["units"]
    workflow.phase_sign = meta["PhaseScaling"]["sign"]
    for section, (attribute, stage) in SIDECAR_STAGES.items():
        if section not in meta:
            continue
        settings = dict(meta[section])
        if section == "Masking" and settings["method"] == "file":
            if workflow.mask_dir is None:
                raise ValueError(
                    f"{path}: the map was made with the user's mask {settings.get('file')}; "
                    "give --mask-dir too"
                )
            continue
        setattr(workflow, attribute, settings["method"])
        workflow.parameters[stage] = stage_settings(settings)
    two_pass = meta["DipoleInversion"].get("two_pass")
    workflow.two_pass = two_pass is not None
    if two_pass is not None:
        workflow.parameters["two_pass"] = {
            k: two_pass[k] for k in ("noise_factor", "deviation_cycles") if k in two_pass
        }
    return workflow


def stage_settings(section):
    """The parameters a stage's sidecar section lists that its function takes as settings."""
    return {k: v for k, v in section.items() if k not in _NOT_SETTINGS}
