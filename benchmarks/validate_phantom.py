"""Score the whole pipeline on the project's phantom for several background/inversion pairs.

Usage: python benchmarks/validate_phantom.py [--work DIR] [--pairs resharp:tgv ...] [--ceiling]

Writes the default 2 mm phantom (`bids_qsm-phantom`), runs `bids_qsm ... participant` once per
background:inversion pair (the other stages at their defaults), and prints, against the true
chi inside the true brain where the map is non-zero (both demeaned there): correlation r,
NRMSE (%), the coverage of the brain, the largest deep grey matter mean error (ppm, after
demeaning) and the mean chi (ppm) of the vein, microbleed and calcification labels, with the
wall time of each run, as a markdown table.

--ceiling adds, under each run, the same inversion (the pipeline's own `Invert` interface and
settings) of the phantom's true local field on the mask that run's background removal left
valid: what a perfect background removal would give, all else equal.
"""

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib

from bids_qsm.cli.run import main as bids_qsm
from bids_qsm.interfaces.inversion import Invert
from bids_qsm.phantom import write_dataset
from bids_qsm.provenance import stage_settings
from bids_qsm.qsm import metrics
from bids_qsm.qsm.units import hz_to_ppm

PAIRS = ["resharp:tgv", "vsharp:tgv", "pdf:tgv", "lbv:tgv", "resharp:tikhonov", "resharp:tkd"]
DEEP_GREY = ("Caudate", "Putamen", "Pallidum", "Thalamus", "Substancia-Nigra")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the phantom and the runs")
    parser.add_argument("--pairs", nargs="+", default=PAIRS, metavar="BACKGROUND:INVERSION")
    parser.add_argument(
        "--ceiling", action="store_true", help="also invert the true local field on each run's mask"
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bids_qsm_validate_"))
    bids = write_dataset(work / "bids", subjects=1)
    truth = _truth(bids)
    print("| background | inversion | r | NRMSE % | coverage | max deep GM error (ppm) "
          "| vein | microbleed | calcification | wall (s) |")  # fmt:skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        background, inversion = pair.split(":")
        out = work / f"out_{background}_{inversion}"
        start = time.perf_counter()
        code = bids_qsm([str(bids), str(out), "participant", "-w", str(work / f"work_{pair}"),
                         "--skip-bids-validation", "--background-method", background,
                         "--inversion-method", inversion])  # fmt:skip
        wall = time.perf_counter() - start
        if code:
            print(f"| {background} | {inversion} | failed with exit code {code} |")
            continue
        chi = nib.load(out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").get_fdata()
        print(_row(background, inversion, chi, truth, wall), flush=True)
        if args.ceiling:
            start = time.perf_counter()
            chi = _ceiling(truth["local_field"], out, work / f"work_{pair}", inversion)
            wall = time.perf_counter() - start
            label = f"{inversion} of the true local field"
            print(_row(f"({background} mask)", label, chi, truth, wall), flush=True)


def _truth(bids):
    folder = bids / "derivatives" / "phantom"
    anat = folder / "sub-01" / "anat"
    with open(folder / "dseg.tsv") as f:
        names = {row["name"]: int(row["index"]) for row in csv.DictReader(f, delimiter="\t")}
    return {
        "chi": nib.load(anat / "sub-01_Chimap.nii.gz").get_fdata(),
        "labels": nib.load(anat / "sub-01_dseg.nii.gz").get_fdata().astype(int),
        "brain": nib.load(anat / "sub-01_desc-brain_mask.nii.gz").get_fdata() > 0,
        "names": names,
        "local_field": nib.load(anat / "sub-01_desc-local_fieldmap.nii.gz"),  # Hz
    }


def _ceiling(true_field_hz, out, work, inversion):
    """chi (ppm) from the phantom's true local field (image in Hz) on the mask the run's
    background removal left valid (from the run's work folder), by the run's inversion with the
    settings its Chimap sidecar lists."""
    stages = work / "bids_qsm_wf" / "sub_01_wf" / "qsm_sub_01_wf"
    meta = json.loads((out / "sub-01" / "anat" / "sub-01_Chimap.json").read_text())
    ppm = hz_to_ppm(true_field_hz.get_fdata(), meta["MagneticFieldStrength"]).astype("float32")
    local = stages / "ceiling_local_field.nii"
    nib.save(nib.Nifti1Image(ppm, true_field_hz.affine), local)
    result = Invert(
        local_field=str(local), mask=str(stages / "inversion_wf" / "background" / "mask.nii"),
        brain_mask=str(stages / "fieldmap_wf" / "mask" / "mask.nii"), echo_times=meta["EchoTime"],
        field_strength=meta["MagneticFieldStrength"], method=inversion,
        params=stage_settings(meta["DipoleInversion"]),
        omp_nthreads=os.cpu_count(),
    )  # fmt:skip
    return nib.load(result.run(cwd=str(stages)).outputs.out_file).get_fdata()


def _row(background, inversion, chi, truth, wall):
    inside = truth["brain"] & (chi != 0)
    coverage = inside.sum() / truth["brain"].sum()
    true_chi = truth["chi"] - truth["chi"][inside].mean()
    chi = chi - chi[inside].mean()

    def mean_of(name, values):
        return values[inside & (truth["labels"] == truth["names"][name])].mean()

    deep = [n for n in truth["names"] if n.split("-", 1)[-1] in DEEP_GREY]
    deep_error = max(abs(mean_of(n, chi) - mean_of(n, true_chi)) for n in deep)
    cells = [
        background, inversion,
        f"{metrics.correlation(chi, true_chi, inside):.3f}",
        f"{metrics.nrmse(chi, true_chi, inside):.1f}",
        f"{coverage:.3f}",
        f"{deep_error:.4f}",
        *(f"{mean_of(n, chi):+.3f}" for n in ("Vein", "Microbleed", "Calcification")),
        f"{wall:.0f}",
    ]  # fmt:skip
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    main()
