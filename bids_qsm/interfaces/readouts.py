"""Interfaces of the clinical read-outs: foci, veins and oxygenation, lesion rims, their figures.

Tables are BIDS TSVs with `n/a` for missing values and a JSON sidecar describing the columns.
"""

import csv
import json
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from scipy import ndimage as ndi

from bids_qsm.interfaces.nifti import geometry, load, load_mask, run_stage, save_like

# column: (description, units or None)
FOCI_COLUMNS = {
    "id": ("focus number, its order of decreasing |peak_ppm|", None),
    "class": ("paramagnetic (microbleed-like) or diamagnetic (calcification-like)", None),
    "x_mm": ("contrast-weighted centroid, scanner x (RAS+)", "mm"),
    "y_mm": ("contrast-weighted centroid, scanner y (RAS+)", "mm"),
    "z_mm": ("contrast-weighted centroid, scanner z (RAS+)", "mm"),
    "volume_mm3": ("volume of the half-maximum region", "mm^3"),
    "mean_ppm": ("mean chi of the region over its surroundings (signed)", "ppm"),
    "peak_ppm": ("extreme chi of the region over its surroundings (signed)", "ppm"),
    "moment_ppm_mm3": ("volume_mm3 x mean_ppm", "ppm mm^3"),
    "integrated_ppm_mm3": (
        "chi over the surroundings summed over the region and one voxel "
        "around it (partial-volume robust moment)",
        "ppm mm^3",
    ),  # fmt: skip
    "surround_ppm": ("median chi of the shell around the region (map's reference)", "ppm"),
    "magnitude_ratio": (
        "mean first-echo magnitude of the region over its shell's median "
        "(corroboration: below 1 is dark)",
        None,
    ),  # fmt: skip
    "r2star_per_s": ("mean R2* of the region (corroboration)", "1/s"),
    "lesion": ("index of the lesion the focus lies in (with --lesion-dir)", None),
}
LESION_COLUMNS = {
    "index": ("label of the lesion in the lesion segmentation", None),
    "name": ("name of the lesion", None),
    "volume_mm3": ("lesion volume on the QSM grid", "mm^3"),
    "diameter_mm": ("diameter of a sphere of the same volume", "mm"),
    "core_ppm": ("median chi of the core (lesion deeper than the rim band)", "ppm"),
    "rim_ppm": ("mean over the angular sectors of the rim band's chi", "ppm"),
    "nawm_ppm": (
        "median chi of the normal-appearing white matter ring, veins and foci excluded",
        "ppm",
    ),  # fmt: skip
    "rim_fraction": (
        "fraction of the rim band's angular sectors above both nawm_ppm and "
        "core_ppm by threshold_ppm",
        None,
    ),  # fmt: skip
    "threshold_ppm": (
        "margin a sector needs: max(floor, k x spread of the ring's sectors)",
        "ppm",
    ),  # fmt: skip
    "judged": ("whether the lesion is large enough to be judged", None),
    "rim": ("paramagnetic rim: rim_fraction >= the rule's fraction (n/a when not judged)", None),
    "foci": ("ids of the foci inside the lesion, comma-separated", None),
}
VEIN_COLUMNS = {
    "vein_volume_mm3": ("volume of the vein mask", "mm^3"),
    "measured_volume_mm3": ("volume of the vein voxels measured", "mm^3"),
    "measured_on": (
        "wide veins (about three voxels across or more), or centrelines (partial "
        "volume: underestimated) where no vein is that wide",
        None,
    ),  # fmt: skip
    "vein_ppm": ("median chi of the measured vein voxels", "ppm"),
    "reference": ("reference region of dchi", None),
    "reference_ppm": ("median chi of the reference region", "ppm"),
    "dchi_ppm": ("vein_ppm - reference_ppm", "ppm"),
    "hct": ("haematocrit assumed", None),
    "Y": ("venous oxygen saturation, 1 - dchi/(hct 3.43) - 0.10/3.43", None),
}


def write_table(path, columns, rows, *, sidecar=None):
    """Write rows ({column: value}) as a BIDS TSV with `n/a` for None, and its JSON sidecar
    describing `columns` plus `sidecar`. Returns the TSV's path."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
    meta = {c: {"Description": d, **({"Units": u} if u else {})} for c, (d, u) in columns.items()}
    meta.update(sidecar or {})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path


def read_table(path):
    """Rows of a read-out TSV as {column: text}."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _cell(value):
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return str(value)


def first_echo(magnitude):
    """The shortest echo's magnitude (3-D): foci are dark there by their own short T2* and low
    proton density, while the dephasing of macroscopic field gradients near air (the sinuses),
    which mimics them at later echoes, has not yet set in (on the phantom: sinus-side cortex at
    0.98 of its surroundings at 4 ms and 0.45 at 22 ms; microbleeds and calcifications at 0.24
    to 0.36 at 4 ms)."""
    magnitude = np.asarray(magnitude)
    return magnitude if magnitude.ndim == 3 else magnitude[..., 0]


class _FociInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the map is valid on")
    magnitude = File(exists=True, mandatory=True, desc="magnitude, 4-D (echo last) or 3-D")
    r2star = File(exists=True, desc="R2* (1/s), for corroboration")
    lesions = File(exists=True, desc="lesion labels on the grid, to say which focus lies where")
    lesion_names = traits.Dict(traits.Int, traits.Str, desc="{index: name}; empty: a mask")
    params = traits.Dict(desc="parameters of qsm.foci.find_foci")


class _FociOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="foci: 1 paramagnetic, 2 diamagnetic")
    lookup = File(exists=True, desc="dseg.tsv of the foci labels")
    table = File(exists=True, desc="desc-foci_Chimap.tsv")
    meta = traits.Dict(desc="sidecar of the table")
    params = traits.Dict(desc="settings the search ran with")
    warnings = traits.List(traits.Str, desc="warnings")


class Foci(SimpleInterface):
    """Microbleed- and calcification-like foci of a Chimap (`qsm.foci.find_foci`)."""

    input_spec = _FociInputSpec
    output_spec = _FociOutputSpec

    def _run_interface(self, runtime):
        from bids_qsm.qsm.foci import centroids_mm, find_foci
        from bids_qsm.qsm.lesions import foci_in_lesions, label_lesions

        chi, ref = load(self.inputs.chimap)
        mask = load_mask(self.inputs.mask)
        magnitude = first_echo(load(self.inputs.magnitude)[0])
        r2star = load(self.inputs.r2star)[0] if isdefined(self.inputs.r2star) else None
        data = {"voxel_size": geometry(ref)["voxel_size"], "magnitude": magnitude,
                "r2star": r2star}  # fmt: skip
        (dseg, foci), settings, warnings = run_stage(
            find_foci, chi, mask, data=data, params=self.inputs.params
        )
        inside = {}
        if isdefined(self.inputs.lesions):
            lesions, _ = label_lesions(load(self.inputs.lesions, dtype=np.int32)[0],
                                       self.inputs.lesion_names)  # fmt: skip
            inside = foci_in_lesions(foci, lesions)
        for focus, xyz in zip(foci, centroids_mm(foci, ref.affine), strict=True):
            focus.update(zip(("x_mm", "y_mm", "z_mm"), (float(v) for v in xyz), strict=True))
            focus["lesion"] = inside.get(focus["id"])
        cwd = Path(runtime.cwd)
        self._results["dseg"] = save_like(ref, dseg, cwd, "foci", dtype=np.int16)
        lookup = cwd / "dseg.tsv"
        lookup.write_text("index\tname\n1\tparamagnetic\n2\tdiamagnetic\n")
        self._results["lookup"] = str(lookup)
        sidecar = {"FociSearch": settings, "Counts": {
            "paramagnetic": sum(f["class"] == "paramagnetic" for f in foci),
            "diamagnetic": sum(f["class"] == "diamagnetic" for f in foci),
        }}  # fmt: skip
        table = write_table(cwd / "foci.tsv", FOCI_COLUMNS, foci, sidecar=sidecar)
        self._results["table"] = str(table)
        self._results["meta"] = json.loads(table.with_suffix(".json").read_text())
        self._results["params"] = settings
        self._results["warnings"] = warnings
        return runtime


class _VeinsInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the map is valid on")
    foci = File(exists=True, desc="foci dseg, left out of the veins")
    labels = File(exists=True, desc="segmentation labels on the grid (CSF reference)")
    reference_labels = traits.List(traits.Int, desc="label indices of the CSF reference")
    hct = traits.Float(0.40, usedefault=True, desc="haematocrit")
    params = traits.Dict(desc="parameters of qsm.veins.vein_mask")


class _VeinsOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="vein mask")
    table = File(exists=True, desc="desc-veins_Chimap.tsv")
    meta = traits.Dict(desc="sidecar of the table")
    warnings = traits.List(traits.Str, desc="warnings")


class Veins(SimpleInterface):
    """Vein mask, venous susceptibility and oxygen saturation (`qsm.veins`)."""

    input_spec = _VeinsInputSpec
    output_spec = _VeinsOutputSpec

    def _run_interface(self, runtime):
        from bids_qsm.qsm.veins import measure_veins, vein_mask

        chi, ref = load(self.inputs.chimap)
        mask = load_mask(self.inputs.mask)
        voxel = geometry(ref)["voxel_size"]
        exclude = load_mask(self.inputs.foci) if isdefined(self.inputs.foci) else None
        data = {"voxel_size": voxel, "exclude": exclude}
        veins, settings, warnings = run_stage(
            vein_mask, chi, mask, data=data, params=self.inputs.params
        )
        reference, name = None, "CSF"
        if isdefined(self.inputs.labels) and self.inputs.reference_labels:
            labels = load(self.inputs.labels, dtype=np.int32)[0]
            reference = np.isin(labels, self.inputs.reference_labels)
            eroded = ndi.binary_erosion(reference)  # CSF's edge has tissue partial volume
            reference = eroded if (eroded & mask).any() else reference
            if not (reference & mask).any():
                warnings.append("the CSF labels lie outside the QSM mask: tissue around the "
                                "veins is the reference instead")  # fmt: skip
                reference = None
        result = measure_veins(chi, veins, mask, voxel_size=voxel, reference=reference,
                               reference_name=name, hct=self.inputs.hct)  # fmt: skip
        if result["measured_on"] != "wide veins":
            warnings.append("no vein wide enough to escape partial volume: venous values from "
                            "centrelines, underestimated" if result["measured_on"] else
                            "no vein found: no venous value")  # fmt: skip
        cwd = Path(runtime.cwd)
        self._results["mask_file"] = save_like(ref, veins, cwd, "veins", dtype=np.uint8)
        sidecar = {
            "VeinMask": settings,
            "Constants": {"dchi_do_ppm": 3.43, "dchi_oxy_ppm": -0.10, "Units": "SI"},
            "Caveats": "veins thinner than about three voxels are not measured; values depend "
            "on the vein's orientation to B0 and on the inversion's regularisation",
        }
        table = write_table(cwd / "veins.tsv", VEIN_COLUMNS, [result], sidecar=sidecar)
        self._results["table"] = str(table)
        self._results["meta"] = json.loads(table.with_suffix(".json").read_text())
        self._results["warnings"] = warnings
        return runtime


class _LesionsInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the map is valid on")
    lesions = File(exists=True, mandatory=True, desc="lesion labels (or a mask) on the grid")
    lesion_file = traits.Str(mandatory=True, desc="the user's lesion file (for messages)")
    names = traits.Dict(traits.Int, traits.Str, desc="{index: name}; empty: a binary mask, "
                        "whose connected pieces are the lesions")  # fmt: skip
    foci = File(exists=True, desc="foci dseg (left out of the NAWM ring)")
    foci_table = File(exists=True, desc="foci table (which focus lies in which lesion)")
    veins = File(exists=True, desc="vein mask (left out of the NAWM ring)")
    labels = File(exists=True, desc="segmentation labels on the grid (white matter)")
    white_matter_labels = traits.List(traits.Int, desc="label indices of the white matter")
    params = traits.Dict(desc="parameters of qsm.lesions.lesion_rims")


class _LesionsOutputSpec(TraitedSpec):
    lesions = File(exists=True, desc="the lesions as labelled")
    table = File(exists=True, desc="desc-lesions_Chimap.tsv")
    meta = traits.Dict(desc="sidecar of the table")
    rims = traits.Dict(desc="{lesion index: rim true/false/None}")
    warnings = traits.List(traits.Str, desc="warnings")


class Lesions(SimpleInterface):
    """Paramagnetic rim read-out of given lesions (`qsm.lesions.lesion_rims`)."""

    input_spec = _LesionsInputSpec
    output_spec = _LesionsOutputSpec

    def _run_interface(self, runtime):
        from bids_qsm.qsm.lesions import label_lesions, lesion_rims
        from bids_qsm.segmentation import SegmentationError

        chi, ref = load(self.inputs.chimap)
        mask = load_mask(self.inputs.mask)
        lesions, names = label_lesions(load(self.inputs.lesions, dtype=np.int32)[0],
                                       self.inputs.names)  # fmt: skip
        inside = float(mask[lesions > 0].mean()) if (lesions > 0).any() else 0.0
        if inside < 0.5:
            raise SegmentationError(
                self.inputs.lesion_file,
                f"only {inside:.0%} of the lesion voxels lie inside the QSM mask: lesions of "
                "another subject, or another grid",
            )
        data = {"voxel_size": geometry(ref)["voxel_size"], "names": names, "foci": None,
                "veins": None, "white_matter": None}  # fmt: skip
        if isdefined(self.inputs.foci):
            data["foci"] = load_mask(self.inputs.foci)
        if isdefined(self.inputs.veins):
            data["veins"] = load_mask(self.inputs.veins)
        if isdefined(self.inputs.labels) and self.inputs.white_matter_labels:
            labels = load(self.inputs.labels, dtype=np.int32)[0]
            data["white_matter"] = np.isin(labels, self.inputs.white_matter_labels)
        rows, settings, warnings = run_stage(
            lesion_rims, chi, mask, lesions, data=data, params=self.inputs.params
        )
        by_lesion = {}
        if isdefined(self.inputs.foci_table):
            for focus in read_table(self.inputs.foci_table):
                if focus["lesion"] != "n/a":
                    by_lesion.setdefault(int(focus["lesion"]), []).append(focus["id"])
        for row in rows:
            row["foci"] = ",".join(by_lesion.get(row["index"], [])) or None
        cwd = Path(runtime.cwd)
        self._results["lesions"] = save_like(ref, lesions, cwd, "lesions", dtype=np.int16)
        sidecar = {"RimRule": settings, "Sources": [self.inputs.lesion_file]}
        table = write_table(cwd / "lesions.tsv", LESION_COLUMNS, rows, sidecar=sidecar)
        self._results["table"] = str(table)
        self._results["meta"] = json.loads(table.with_suffix(".json").read_text())
        self._results["rims"] = {row["index"]: row["rim"] for row in rows}
        self._results["warnings"] = warnings
        return runtime


class _ReadoutFiguresInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    mask = File(exists=True, mandatory=True, desc="mask the map is valid on")
    swi = File(exists=True, mandatory=True, desc="susceptibility-weighted image")
    foci = File(exists=True, desc="foci dseg")
    lesions = File(exists=True, desc="lesion labels")
    rims = traits.Dict(desc="{lesion index: rim}")
    veins = File(exists=True, desc="vein mask")


class _ReadoutFiguresOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="figures, in the order of `keys`")
    keys = traits.List(traits.Str, desc="what each figure shows (its desc- entity)")


class ReadoutFigures(SimpleInterface):
    """Report figures of the read-outs: findings beside the SWI, the veins' projection."""

    input_spec = _ReadoutFiguresInputSpec
    output_spec = _ReadoutFiguresOutputSpec

    def _run_interface(self, runtime):
        from bids_qsm.reports.readout_figures import plot_findings, plot_vein_projection

        chi, ref = load(self.inputs.chimap)
        mask = load_mask(self.inputs.mask)
        voxel = geometry(ref)["voxel_size"]
        files = {}
        foci = load(self.inputs.foci, np.int16)[0] if isdefined(self.inputs.foci) else None
        lesions = (load(self.inputs.lesions, np.int16)[0]
                   if isdefined(self.inputs.lesions) else None)  # fmt: skip
        if foci is not None or lesions is not None:
            rims = {int(k): v for k, v in self.inputs.rims.items()} if self.inputs.rims else {}
            files["findings"] = plot_findings(
                chi, load(self.inputs.swi)[0], mask, f"{runtime.cwd}/findings.svg",
                voxel_size=voxel, foci=foci, lesions=lesions, rims=rims,
            )  # fmt: skip
        if isdefined(self.inputs.veins):
            files["veins"] = plot_vein_projection(
                chi, load_mask(self.inputs.veins), mask, f"{runtime.cwd}/veins.svg",
                voxel_size=voxel,
            )  # fmt: skip
        self._results["keys"] = list(files)
        self._results["out_files"] = [str(f.path) for f in files.values()]
        return runtime
