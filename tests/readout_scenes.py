"""A small synthetic brain with planted findings of known susceptibility, for the read-outs.

Painted on a grid twice as fine and block-averaged (partial volume), then passed through the
dipole forward model and a closed-form Tikhonov inversion (blur and the opposite-sign lobes an
inversion leaves beside strong sources), plus noise: the read-outs see what a pipeline gives.
"""

from dataclasses import dataclass, field

import numpy as np

from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.invert import tikhonov

VOXEL = (2.0, 2.0, 2.0)
SHAPE = (64, 64, 48)
WM = -0.03  # ppm, the background tissue
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -(np.array(SHAPE) - 1)  # mm = 2 * voxel - (shape - 1): centred grid


@dataclass
class Scene:
    chi: np.ndarray  # inverted map (ppm), 0 outside the mask
    true_chi: np.ndarray  # painted (ppm), block-averaged
    mask: np.ndarray
    magnitude: np.ndarray  # T2*-weighted magnitude (dark where R2* is high)
    foci: list = field(default_factory=list)  # (centre mm, sign)
    nuclei: np.ndarray = None  # bool: the smooth iron-rich nuclei
    veins: np.ndarray = None  # bool: planted veins (wide ones)
    vein_chi: float = 0.0  # ppm over WM
    lesions: np.ndarray = None  # int labels: 1 rim, 2 rimless, 3 tiny


def _mm(shape, k):
    """Scanner mm (x, y, z) of the fine grid's voxel centres (k fine voxels per voxel)."""
    axes = [(np.arange(n * k) + 0.5) / k * 2.0 - n for n in shape]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _block(a, k):
    s = a.shape
    return a.reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k).mean(axis=(1, 3, 5))


def make_scene(*, seed=0, noise=0.005, vein_chi=0.40, rim_chi=0.10, regularization=0.005):
    """The scene: WM ellipsoid brain, two nuclei (0.15, 0.12 ppm), a wide and a thin vein along
    x, microbleeds (+1.0) and calcifications (-1.0) of 3-8 mm, one bleed at the mask's edge (not
    to be reported), a lesion with a 2 mm rim of `rim_chi` over WM, a rimless lesion and a tiny
    one; chi in ppm."""
    k = 2
    x, y, z = _mm(SHAPE, k)
    chi = np.zeros((SHAPE[0] * k, SHAPE[1] * k, SHAPE[2] * k), np.float32)
    brain = (x / 56) ** 2 + (y / 56) ** 2 + (z / 42) ** 2 < 1
    chi[brain] = WM
    r2 = np.where(brain, 20.0, 0.0).astype(np.float32)

    def ball(c, r):
        return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r**2

    nuclei = ((x + 18) / 4) ** 2 + ((y - 4) / 9) ** 2 + (z / 6) ** 2 < 1
    nuclei |= ball((16, -14, -10), 3.5)
    chi[nuclei] = WM + 0.15
    chi[ball((16, -14, -10), 3.5)] = WM + 0.12
    r2[nuclei] = 40
    wide = ((y - 30) ** 2 + (z - 14) ** 2 < 3.0**2) & (np.abs(x) < 40)
    thin = ((y + 34) ** 2 + (z - 4) ** 2 < 1.2**2) & (np.abs(x) < 36)
    chi[wide | thin] = WM + vein_chi
    r2[wide | thin] = 60
    foci = [((30, 10, 20), 1, 2.5), ((-33, -19, 13), 1, 2.0), ((4, -36, -20), 1, 4.0),
            ((-20, 30, -14), -1, 3.0), ((34, -30, -6), -1, 2.0)]  # fmt: skip
    for centre, sign, radius in foci:
        chi[ball(centre, radius)] = WM + sign * 1.0
        r2[ball(centre, radius)] = 150
    chi[ball((0, 53, 0), 2.5)] = WM + 1.0  # at the edge of the brain
    lesions = np.zeros(chi.shape, np.int16)
    lesions[ball((-6, 14, 22), 7)] = 1
    chi[ball((-6, 14, 22), 7)] = WM + rim_chi
    chi[ball((-6, 14, 22), 5)] = WM + 0.03
    lesions[ball((24, 36, -6), 7)] = 2
    chi[ball((24, 36, -6), 7)] = WM + 0.03
    lesions[ball((-35, 1, -21), 1.6)] = 3
    chi[~brain] = 0
    true_chi = _block(chi, k).astype(np.float32)
    mask = _block(brain.astype(np.float32), k) > 0.99
    rng = np.random.default_rng(seed)
    field_ppm = forward_field(true_chi * mask, VOXEL) + rng.normal(0, noise, mask.shape)
    chi_map = tikhonov(field_ppm.astype(np.float32), mask, voxel_size=VOXEL,
                       regularization=regularization)  # fmt: skip
    chi_map = np.where(mask, chi_map - np.median(chi_map[mask]) + WM, 0).astype(np.float32)
    magnitude = _block(np.where(brain, 0.7 * np.exp(-r2 * 0.02), 0), k).astype(np.float32)
    magnitude += rng.normal(0, 0.005, magnitude.shape).astype(np.float32)
    lesion_labels = np.zeros(SHAPE, np.int16)
    for index in (1, 2, 3):
        lesion_labels[_block((lesions == index).astype(np.float32), k) >= 0.5] = index
    return Scene(
        chi=chi_map, true_chi=true_chi, mask=mask, magnitude=magnitude,
        foci=[(np.array(c, float), s) for c, s, _ in foci],
        nuclei=_block(nuclei.astype(np.float32), k) > 0.5,
        veins=_block(wide.astype(np.float32), k) > 0.5, vein_chi=vein_chi,
        lesions=lesion_labels,
    )  # fmt: skip


def to_mm(vox):
    """Scanner mm of voxel coordinates on the scene's grid."""
    return AFFINE[:3, :3] @ np.asarray(vox, float) + AFFINE[:3, 3]
