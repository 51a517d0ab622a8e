"""Score every stage of the pipeline on a forward simulation of a real brain.

Usage: python benchmarks/validate_realistic.py BIDS_DIR [--work DIR] [--pairs BG:INV ...]
       [--extra-args "..."]

BIDS_DIR is a simulation with its truth beside it: either `simulate_forward.py`'s
(derivatives/qsm-forward/sub-1/anat: `_Chimap`, `_mask`, `_desc-shimmed_fieldmap` and
`_fieldmap-local`, fields in ppm) or the project's own phantom (`bids_qsm-phantom`, with or without
`--chi-map`: derivatives/phantom/sub-01/anat, fields in Hz). For each background:inversion pair it
runs `bids_qsm ... participant` (other stages at their defaults, plus --extra-args), then prints,
stage by stage, what went wrong where:

- total field (the echo fit) against the true total field, RMS in Hz in the brain's outer voxel
  layers (1, 2, 3-4, 5-8, deeper), after removing its mean difference (a constant is not
  determined by the data);
- local field against the true local field, RMS relative to the true local field's RMS, in the
  same layers, after removing the mean difference over the valid mask;
- chi against the true chi in the true brain where the map is non-zero, both demeaned there:
  NRMSE, HFEN, SSIM (%, %, 1), the slope of the map against the truth (least squares), the
  correlation, the coverage of the brain, and, where the truth has labels, the mean chi of the
  veins, microbleed and calcification and the largest deep grey matter mean error (ppm).
"""

import argparse
import csv
import os
import shlex
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_qsm.qsm import metrics
from bids_qsm.qsm.units import hz_per_ppm

PAIRS = ["resharp:tgv"]
DEEP_GREY = ("Caudate", "Putamen", "Pallidum", "Thalamus", "Substancia-Nigra")
LAYERS = ((1, 1), (2, 2), (3, 4), (5, 8), (9, 10_000))


def load_truth(bids):
    """The simulation's truth: chi (ppm), brain (bool), total and local field (Hz), labels,
    label names, B0 (T), and the subject's label."""
    forward = bids / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    if forward.is_dir():
        b0 = 3.0
        side = next((bids / "sub-1" / "anat").glob("*echo-1_part-phase_MEGRE.json"))
        b0 = float(__import__("json").loads(side.read_text())["MagneticFieldStrength"])

        def hz(name):
            return nib.load(forward / name).get_fdata() * hz_per_ppm(b0)

        brain = nib.load(forward / "sub-1_mask.nii").get_fdata() > 0
        return {
            "subject": "1", "b0": b0, "brain": brain,
            "chi": nib.load(forward / "sub-1_Chimap.nii").get_fdata(),
            "total": hz("sub-1_desc-shimmed_fieldmap.nii"),
            "local": hz("sub-1_fieldmap-local.nii"),
            "labels": None, "names": {},
        }  # fmt: skip
    folder = bids / "derivatives" / "phantom"
    anat = folder / "sub-01" / "anat"
    names = {}
    if (folder / "dseg.tsv").is_file():
        with open(folder / "dseg.tsv") as f:
            names = {r["name"]: int(r["index"]) for r in csv.DictReader(f, delimiter="\t")}

    def data(suffix):
        path = anat / f"sub-01_{suffix}.nii.gz"
        return nib.load(path).get_fdata() if path.is_file() else None

    return {
        "subject": "01", "b0": None,
        "brain": data("desc-brain_mask") > 0, "chi": data("Chimap"),
        "total": data("desc-total_fieldmap"), "local": data("desc-local_fieldmap"),
        "labels": None if data("dseg") is None else data("dseg").astype(int), "names": names,
    }  # fmt: skip


def layers_of(brain):
    """Distance of each brain voxel from outside (1 = the outer layer), face-connected steps."""
    return ndimage.distance_transform_cdt(brain, metric="taxicab")


def layer_rms(diff, where, depth):
    cells = []
    for lo, hi in LAYERS:
        sel = where & (depth >= lo) & (depth <= hi)
        cells.append(f"{np.sqrt(np.mean(diff[sel] ** 2)):.3g}" if sel.any() else "-")
    return cells


def slope(x, ref, mask):
    """Least-squares slope of x against ref in the mask, both demeaned."""
    a = ref[mask] - ref[mask].mean()
    b = x[mask] - x[mask].mean()
    return float(a @ b / (a @ a))


def stage_files(work):
    def find(stage, name):
        found = sorted(work.rglob(f"{stage}/{name}"))
        return found[0] if found else None

    return {
        "total": find("combine", "field_hz.nii"),
        "local": find("background", "local_field_ppm.nii"),
        "valid": find("background", "mask.nii"),
        "mask": find("mask", "mask.nii"),
    }


def score(truth, out, work):
    """One dict of figures for a finished run."""
    files = stage_files(work)
    brain, depth = truth["brain"], layers_of(truth["brain"])
    row = {}
    total = nib.load(files["total"]).get_fdata()
    mask = nib.load(files["mask"]).get_fdata() > 0
    row["mask_dice"] = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    if truth["total"] is not None:
        both = mask & brain
        diff = total - truth["total"]
        diff -= np.median(diff[both])
        row["total_hz"] = layer_rms(diff, both, depth)
        row["total_wraps"] = int((np.abs(diff[both]) > 0.5 * 185.0).sum())
    if truth["local"] is not None:
        b0 = truth["b0"] or float(_sidecar(out, truth)["MagneticFieldStrength"])
        local = nib.load(files["local"]).get_fdata()
        valid = nib.load(files["valid"]).get_fdata() > 0
        row.update(score_local(truth, local, valid, b0))
    row.update(score_chi(truth, nib.load(_chimap(out, truth)).get_fdata()))
    return row


def score_local(truth, local_ppm, valid, b0):
    """The local field (ppm) against the truth on `valid` & the true brain: error RMS relative
    to the true local field's RMS, by voxel layer (`local_rel`) and overall (`local_nrmse`, %),
    after removing the mean difference. b0: T."""
    valid = valid & truth["brain"]
    diff = local_ppm * hz_per_ppm(b0) - truth["local"]
    diff -= diff[valid].mean()
    ref = np.sqrt(np.mean((truth["local"][valid] - truth["local"][valid].mean()) ** 2))
    return {
        "local_rel": layer_rms(diff / ref, valid, layers_of(truth["brain"])),
        "local_nrmse": 100 * np.sqrt(np.mean(diff[valid] ** 2)) / ref,
    }


def score_chi(truth, chi):
    """A chi map (ppm, on the truth's grid) against the true chi, in the true brain where the map
    is non-zero, both demeaned there: coverage, NRMSE, HFEN, SSIM, slope, r, and where the truth
    has labels the largest deep grey matter mean error (ppm) and (map, truth) means of the
    vein, microbleed and calcification labels."""
    brain, row = truth["brain"], {}
    inside = brain & (chi != 0)
    true_chi = truth["chi"]
    row.update(
        coverage=inside.sum() / brain.sum(),
        nrmse=metrics.nrmse(chi, true_chi, inside),
        hfen=metrics.hfen(chi, true_chi, inside),
        ssim=metrics.ssim(chi, true_chi, inside),
        slope=slope(chi, true_chi, inside),
        r=metrics.correlation(chi, true_chi, inside),
    )
    labels, names = truth["labels"], truth["names"]
    if labels is not None:
        c = chi - chi[inside].mean()
        t = true_chi - true_chi[inside].mean()

        def mean_of(name, values):
            sel = inside & (labels == names[name])
            return values[sel].mean() if sel.any() else np.nan

        deep = [n for n in names if n.split("-", 1)[-1] in DEEP_GREY]
        if deep:
            row["deep_gm_err"] = max(abs(mean_of(n, c) - mean_of(n, t)) for n in deep)
        for name in ("Vein", "Microbleed", "Calcification"):
            if name in names:
                row[name] = (mean_of(name, c), mean_of(name, t))
    return row


def _chimap(out, truth):
    return out / f"sub-{truth['subject']}" / "anat" / f"sub-{truth['subject']}_Chimap.nii.gz"


def _sidecar(out, truth):
    import json

    return json.loads(_chimap(out, truth).with_suffix("").with_suffix(".json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids", type=Path)
    parser.add_argument("--work", type=Path, help="folder for the runs")
    parser.add_argument("--pairs", nargs="+", default=PAIRS, metavar="BACKGROUND:INVERSION")
    parser.add_argument("--extra-args", default="", help="more bids_qsm options, one string")
    parser.add_argument("--tag", default="", help="name of this configuration in the output")
    args = parser.parse_args(argv)
    from bids_qsm.cli.run import main as bids_qsm

    work = args.work or Path(tempfile.mkdtemp(prefix="bids_qsm_realistic_"))
    truth = load_truth(args.bids)
    for pair in args.pairs:
        background, inversion = pair.split(":")
        tag = f"{background}_{inversion}{args.tag}"
        out = work / f"out_{tag}"
        start = time.perf_counter()
        code = bids_qsm([str(args.bids), str(out), "participant", "-w", str(work / f"work_{tag}"),
                         "--skip-bids-validation", "--background-method", background,
                         "--inversion-method", inversion,
                         *shlex.split(args.extra_args)])  # fmt:skip
        wall = time.perf_counter() - start
        if code:
            print(f"{pair} {args.extra_args}: failed with exit code {code}", flush=True)
            continue
        row = score(truth, out, work / f"work_{tag}")
        print(f"== {pair} {args.extra_args} ({wall:.0f} s)")
        print(f"   mask Dice {row['mask_dice']:.3f}")
        if "total_hz" in row:
            print(f"   total field error, Hz RMS by layer {LAYERS}: {row['total_hz']}; "
                  f"voxels off by > half a wrap at 185 Hz: {row['total_wraps']}")  # fmt:skip
        if "local_rel" in row:
            print(f"   local field error / local RMS by layer: {row['local_rel']}; "
                  f"overall {row['local_nrmse']:.1f} %")  # fmt:skip
        print(f"   chi: NRMSE {row['nrmse']:.1f} %  HFEN {row['hfen']:.1f} %  "
              f"SSIM {row['ssim']:.3f}  slope {row['slope']:.3f}  r {row['r']:.3f}  "
              f"coverage {row['coverage']:.3f}")  # fmt:skip
        extra = []
        if "deep_gm_err" in row:
            extra.append(f"max deep GM error {row['deep_gm_err']:.4f} ppm")
        for name in ("Vein", "Microbleed", "Calcification"):
            if name in row:
                extra.append(f"{name} {row[name][0]:+.3f} (true {row[name][1]:+.3f})")
        if extra:
            print("   " + "; ".join(extra), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    main()
