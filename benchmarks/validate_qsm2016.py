"""Score every dipole inversion on the 2016 QSM challenge data against COSMOS.

Usage: python benchmarks/validate_qsm2016.py [--data DIR] [--out table.md] [--methods tgv tkd ...]

Loads ../shared/data/qsm2016 (local field in ppm, mask, COSMOS chi), runs each method of
`INVERSIONS` with its defaults (those that regularise phase, TGV, WH-QSM and TFI, with the
data's TE 25 ms and B0 2.8936 T; no noise map comes with this data, so TGV uses its fixed
fallback strength), and prints
RMSE / HFEN (%), SSIM, correlation, slope against COSMOS and wall time, as a markdown table.
"""

import argparse
import inspect
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_qsm.qsm import metrics
from bids_qsm.qsm.invert import INVERSIONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qsm2016"
TE, B0 = 0.025, 2.8936
ACQUISITION = {"te": TE, "b0_tesla": B0}  # for the methods that regularise phase at te


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--methods", nargs="+", default=list(INVERSIONS))
    args = parser.parse_args(argv)

    def load(name):
        img = nib.load(args.data / f"{name}.nii.gz")
        return np.asarray(img.dataobj, dtype=np.float32), img.header.get_zooms()[:3]

    field, voxel_size = load("phs_tissue")
    mask = load("msk")[0] > 0
    cosmos = load("chi_cosmos")[0]
    voxel_size = tuple(float(v) for v in voxel_size)

    rows = []
    for name in args.methods:
        start = time.perf_counter()
        takes = inspect.signature(INVERSIONS[name]).parameters
        extra = {k: v for k, v in ACQUISITION.items() if k in takes}
        chi = INVERSIONS[name](field, mask, voxel_size=voxel_size, b0_dir=(0.0, 0.0, 1.0), **extra)
        seconds = time.perf_counter() - start
        slope = np.polyfit(cosmos[mask], chi[mask], 1)[0]
        row = (
            name,
            metrics.nrmse(chi, cosmos, mask),
            metrics.hfen(chi, cosmos, mask),
            metrics.ssim(chi, cosmos, mask),
            metrics.correlation(chi, cosmos, mask),
            slope,
            seconds,
        )
        rows.append(row)
        print("{:<10} RMSE {:5.1f}  HFEN {:5.1f}  SSIM {:.3f}  r {:.3f}  slope {:.2f}  {:.1f} s"
              .format(*row), flush=True)  # fmt: skip

    lines = [
        "| method | RMSE (%) | HFEN (%) | SSIM | correlation | slope vs COSMOS | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        "| {} | {:.1f} | {:.1f} | {:.3f} | {:.3f} | {:.2f} | {:.1f} |".format(*r) for r in rows
    ]
    load_avg = os.getloadavg()
    footer = (
        f"\n{os.cpu_count()} CPUs, NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'all')}, "
        f"load average {load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} at the end."
    )
    table = "\n".join(lines) + "\n" + footer
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
