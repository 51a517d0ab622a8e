"""A second, independent simulator for the benchmarks: a real chi map through `qsm-forward`.

Usage: python benchmarks/simulate_forward.py OUT_BIDS [--chi-map FILE --mask FILE] [--snr 100]
       [--echo-times 0.0054 0.0108 ...] [--b0 3] [--b0-dir 0 0 1] [--seed 0]

Places a susceptibility map (by default the COSMOS map of the 2016 challenge in `../shared/data`)
in `qsm-forward` (GPL; a benchmark-only dependency, never imported by bids_qsm): its dipole
forward model over the whole grid, a second-order shim fitted in the brain and removed, the
package's smooth quadratic phase offset common to all echoes, T2* decay and complex noise at a
peak SNR. Proton density and R2* are made up from chi (tissue-like contrast: iron-rich structures
darker and faster decaying). The truth lands where `validate_realistic.py` reads it, in
derivatives/qsm-forward/sub-1/anat/: `_Chimap` (ppm), `_mask`, the total field after the shim
`_desc-shimmed_fieldmap` and the field of the brain's own sources `_fieldmap-local` (ppm).
"""

import argparse
import contextlib
import io
from pathlib import Path

import nibabel as nib
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "qsm2016"


def simulate(out, *, chi_map, mask, snr=100.0, echo_times=None, b0=3.0, b0_dir=(0, 0, 1),
             seed=0):  # fmt: skip
    """Write a BIDS dataset under `out` simulated from `chi_map` (ppm NIfTI) in `mask`."""
    import qsm_forward

    echo_times = np.asarray(echo_times or [0.0054 * (i + 1) for i in range(5)], float)
    chi_img = nib.load(chi_map)
    brain = nib.load(mask).get_fdata() > 0
    chi = np.where(brain, chi_img.get_fdata(), 0.0).astype(np.float32)
    m0 = np.where(brain, np.clip(0.85 - 0.8 * chi, 0.5, 1.0), 0.0).astype(np.float32)
    r2star = np.where(brain, np.clip(18.0 + 120.0 * np.abs(chi), 18.0, 120.0), 0.0)

    maps = Path(out).parent / "forward_maps"
    maps.mkdir(parents=True, exist_ok=True)
    for name, data in [("chi", chi), ("M0", m0), ("R1", np.ones_like(chi)), ("R2star", r2star),
                       ("mask", brain), ("seg", brain)]:  # fmt: skip
        image = nib.Nifti1Image(np.asarray(data, np.float32), chi_img.affine)
        nib.save(image, maps / f"{name}.nii")
    tissue = qsm_forward.TissueParams(
        root_dir=str(maps), chi="chi.nii", M0="M0.nii", R1="R1.nii", R2star="R2star.nii",
        mask="mask.nii", seg="seg.nii",
    )  # fmt: skip
    recon = qsm_forward.ReconParams(
        subject="1", TR=0.05, TEs=echo_times, flip_angle=15, B0=b0, B0_dir=np.asarray(b0_dir),
        voxel_size=np.asarray(chi_img.header.get_zooms()[:3]), peak_snr=snr,
        random_seed=seed,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        qsm_forward.generate_bids(tissue, recon, str(out), save_field=True, save_shimmed_field=True)
    return Path(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--chi-map", default=SHARED / "chi_cosmos.nii.gz")
    parser.add_argument("--mask", default=SHARED / "msk.nii.gz")
    parser.add_argument("--snr", type=float, default=100.0)
    parser.add_argument("--echo-times", type=float, nargs="+")
    parser.add_argument("--b0", type=float, default=3.0)
    parser.add_argument("--b0-dir", type=float, nargs=3, default=(0.0, 0.0, 1.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    simulate(args.out, chi_map=args.chi_map, mask=args.mask, snr=args.snr,
             echo_times=args.echo_times, b0=args.b0, b0_dir=args.b0_dir,
             seed=args.seed)  # fmt: skip
    print(args.out)


if __name__ == "__main__":
    main()
