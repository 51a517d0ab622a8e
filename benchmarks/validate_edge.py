"""Background removal x inversion pairs from the TRUE total field and the true brain mask.

Usage: python benchmarks/validate_edge.py [--fixtures head cosmos] [--pairs resharp:tgv ...]

Isolates the last two stages: every pair starts from the same noise-free total field (ppm) and
the true brain mask, so what differs is how each background removal errs at the brain's edge
and how each inversion copes with that. Fixtures:
- `head`: the project's 2 mm head phantom (`bids_qsm.phantom.simulate_head`), skull, air and
  shim included; truth chi and the true total field come with it.
- `cosmos`: the 2016 challenge's COSMOS map inside its brain mask, plus sources outside it that
  make the background: a 6-voxel bone shell (-2 ppm) 5 voxels past the mask (the mask is BET
  eroded by 5) and three air cavities (+9.4 ppm vs tissue), fields by `forward_field`. Needs
  `../shared/data/qsm2016`.
A pair `true:<inversion>` inverts the true local field on the whole mask (the ceiling).
Prints NRMSE and HFEN (%) and the slope of chi against the truth (both demeaned in the brain
where chi is non-zero), the coverage of the brain and the wall time, as a markdown table.
"""

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_qsm.qsm import metrics
from bids_qsm.qsm.background import BACKGROUND
from bids_qsm.qsm.dipole import b0_direction, forward_field, voxel_sizes
from bids_qsm.qsm.invert import INVERSIONS
from bids_qsm.qsm.units import hz_to_ppm

PAIRS = ["resharp:tgv", "ismv:tgv", "resharp:whqsm", "ismv:whqsm", "lbv:whqsm", "true:whqsm"]
QSM2016 = Path(__file__).resolve().parents[2] / "shared" / "data" / "qsm2016"
B0_TESLA = 3.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", nargs="+", default=["head", "cosmos"])
    parser.add_argument("--pairs", nargs="+", default=PAIRS, metavar="BACKGROUND:INVERSION")
    args = parser.parse_args(argv)
    for name in args.fixtures:
        fixture = {"head": _head, "cosmos": _cosmos}[name]()
        print(f"\n{name}: {fixture['brain'].shape} voxels of {fixture['voxel_size']} mm\n")
        print("| background | inversion | NRMSE % | HFEN % | slope | coverage | wall (s) |")
        print("|---|---|---|---|---|---|---|")
        backgrounds = {}
        for pair in args.pairs:
            background, inversion = pair.split(":")
            start = time.perf_counter()
            if background not in backgrounds:
                backgrounds[background] = _local(fixture, background)
            chi = _invert(fixture, *backgrounds[background], inversion)
            print(_row(background, inversion, chi, fixture, time.perf_counter() - start))


def _head():
    from bids_qsm.phantom import simulate_head

    scan = simulate_head(snr=np.inf)
    return {
        "total": hz_to_ppm(scan.field_hz, scan.b0).astype(np.float32),
        "local": hz_to_ppm(scan.local_field_hz, scan.b0).astype(np.float32),
        "brain": scan.mask,
        "chi": scan.chi,
        "voxel_size": tuple(float(h) for h in voxel_sizes(scan.affine)),
        "b0_dir": tuple(b0_direction(scan.affine)),
        # The pipeline's noise-equivalent echo time of the phantom's five echoes.
        "te": float(np.sqrt(np.sum(np.square(scan.echo_times)))),
    }


def _cosmos():
    import nibabel as nib

    image = nib.load(QSM2016 / "chi_cosmos.nii.gz")
    brain = nib.load(QSM2016 / "msk.nii.gz").get_fdata() > 0
    chi = np.where(brain, image.get_fdata(dtype=np.float32), 0.0).astype(np.float32)
    voxel_size = tuple(float(h) for h in voxel_sizes(image.affine))
    tissue = ndimage.binary_dilation(brain, iterations=5)
    outside = np.zeros_like(chi)
    outside[ndimage.binary_dilation(tissue, iterations=6) & ~tissue] = -2.0  # bone
    index = np.indices(chi.shape, dtype=np.float32)
    centre = np.array(ndimage.center_of_mass(brain))
    half = np.array([np.ptp(np.nonzero(brain)[a]) for a in range(3)]) / 2
    for offset, radii in [
        ((0.0, 0.75, -0.75), (12, 8, 8)),  # a frontal sinus below the front of the brain
        ((-0.95, 0.0, -0.6), (5, 5, 5)),  # ear canals
        ((0.95, 0.0, -0.6), (5, 5, 5)),
    ]:
        where = centre + np.multiply(offset, half)
        inside = sum(((index[a] - where[a]) / radii[a]) ** 2 for a in range(3)) <= 1
        outside[inside & ~tissue] = 9.4
    return {
        "total": forward_field(chi + outside, voxel_size),
        "local": forward_field(chi, voxel_size),
        "brain": brain,
        "chi": chi,
        "voxel_size": voxel_size,
        "b0_dir": (0.0, 0.0, 1.0),
        "te": 0.040,  # that of five echoes 5.4 ms apart, as qsm-forward's default protocol
    }


def _local(fixture, background):
    if background == "true":
        return fixture["local"], fixture["brain"]
    return BACKGROUND[background](
        fixture["total"], fixture["brain"], voxel_size=fixture["voxel_size"],
        b0_dir=fixture["b0_dir"],
    )  # fmt: skip


def _invert(fixture, local, valid, inversion):
    """The inversion with what the pipeline's Invert interface would give it."""
    method = INVERSIONS[inversion]
    data = {"te": fixture["te"], "b0_tesla": B0_TESLA, "brain": fixture["brain"]}
    accepted = inspect.signature(method).parameters
    kwargs = {k: v for k, v in data.items() if k in accepted}
    return method(
        local, valid, voxel_size=fixture["voxel_size"], b0_dir=fixture["b0_dir"], **kwargs
    )


def _row(background, inversion, chi, fixture, wall):
    brain = fixture["brain"]
    inside = brain & (chi != 0)
    truth = fixture["chi"]
    x = chi[inside] - chi[inside].mean()
    y = truth[inside] - truth[inside].mean()
    slope = float(np.dot(x, y) / np.dot(y, y))
    cells = [
        background, inversion,
        f"{metrics.nrmse(chi, truth, inside):.1f}",
        f"{metrics.hfen(chi, truth, inside):.1f}",
        f"{slope:.2f}",
        f"{inside.sum() / brain.sum():.3f}",
        f"{wall:.0f}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
