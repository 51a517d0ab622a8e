"""Forward simulation of a multi-echo GRE head scan, written as a BIDS dataset with ground truth.

The head is defined analytically in head-frame millimetres (x right, y anterior, z superior) and
sampled through the acquisition affine on a grid `oversample` times finer than the acquired one.
Susceptibility (ppm, relative to water; air +9.41) makes a field through the dipole kernel of the
grid's own B0 direction, so a tilted head gets an oblique affine and the right field: the sources
outside the brain on the fine grid, the brain's own on the acquired grid (so that the local field
of the truth is exactly the local part of the data). The complex signal
PD * exp(-R2* TE) * exp(i (2 pi f TE + phi0)) is averaged over each block of fine voxels
(partial volume and intravoxel dephasing), then complex Gaussian noise is added. The field is
shimmed like a scanner's second-order shim (harmonics of order <= 2 fitted over the brain).

Truth (`PhantomScan`): chi as simulated (ppm, not referenced: demean it in the mask to compare with
a referenced map), labels (FreeSurfer aseg numbers where they exist), brain mask (all intracranial
labels), tissue R2* (1/s, without macroscopic dephasing) and the total and local field (Hz).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.fft
from numba import njit, prange
from scipy.spatial.transform import Rotation

from bids_qsm import __version__
from bids_qsm.phantom_lesions import LESION_TISSUES, lesion_structures, write_lesion_dir
from bids_qsm.qsm.dipole import b0_direction, forward_field
from bids_qsm.qsm.units import hz_per_ppm

logger = logging.getLogger(__name__)

GENERATOR = "bids_qsm-phantom"
CHI_AIR = 9.41  # ppm relative to water: air +0.36, water -9.05 (SI volume susceptibility)

# label: (name, chi ppm vs water, R2* 1/s at 3 T, proton density). Deep grey matter and vein
# values follow the QSM literature (e.g. Deistung 2013, Langkammer 2012, QSM challenge 2.0).
TISSUES = {
    0: ("Unknown", CHI_AIR, 0.0, 0.0),
    258: ("Head-ExtraCerebral", 0.0, 30.0, 0.85),
    165: ("Skull", -2.1, 500.0, 0.0),
    262: ("Sinus", CHI_AIR, 0.0, 0.0),
    24: ("CSF", 0.0, 2.0, 1.0),
    2: ("Left-Cerebral-White-Matter", -0.03, 20.0, 0.70),
    41: ("Right-Cerebral-White-Matter", -0.03, 20.0, 0.70),
    3: ("Left-Cerebral-Cortex", 0.02, 15.0, 0.82),
    42: ("Right-Cerebral-Cortex", 0.02, 15.0, 0.82),
    4: ("Left-Lateral-Ventricle", 0.0, 2.0, 1.0),
    43: ("Right-Lateral-Ventricle", 0.0, 2.0, 1.0),
    14: ("3rd-Ventricle", 0.0, 2.0, 1.0),
    15: ("4th-Ventricle", 0.0, 2.0, 1.0),
    7: ("Left-Cerebellum-White-Matter", -0.03, 20.0, 0.70),
    46: ("Right-Cerebellum-White-Matter", -0.03, 20.0, 0.70),
    8: ("Left-Cerebellum-Cortex", 0.02, 16.0, 0.84),
    47: ("Right-Cerebellum-Cortex", 0.02, 16.0, 0.84),
    16: ("Brain-Stem", -0.02, 22.0, 0.72),
    10: ("Left-Thalamus", 0.01, 21.0, 0.78),
    49: ("Right-Thalamus", 0.01, 21.0, 0.78),
    11: ("Left-Caudate", 0.06, 22.0, 0.82),
    50: ("Right-Caudate", 0.06, 22.0, 0.82),
    12: ("Left-Putamen", 0.05, 25.0, 0.80),
    51: ("Right-Putamen", 0.05, 25.0, 0.80),
    13: ("Left-Pallidum", 0.15, 40.0, 0.74),
    52: ("Right-Pallidum", 0.15, 40.0, 0.74),
    27: ("Left-Substancia-Nigra", 0.12, 38.0, 0.74),
    59: ("Right-Substancia-Nigra", 0.12, 38.0, 0.74),
    9001: ("Left-Red-Nucleus", 0.10, 32.0, 0.75),
    9002: ("Right-Red-Nucleus", 0.10, 32.0, 0.75),
    9003: ("Left-Dentate", 0.10, 30.0, 0.76),
    9004: ("Right-Dentate", 0.10, 30.0, 0.76),
    9005: ("Vein", 0.40, 60.0, 0.75),
    9006: ("Calcification", -1.0, 150.0, 0.30),
    9007: ("Microbleed", 1.0, 200.0, 0.40),
    9000: ("Brain", 0.0, 18.0, 0.80),  # unsegmented brain of bids_qsm.phantom_chimap (its chi map)
    **LESION_TISSUES,  # planted findings of bids_qsm.phantom_lesions (painted with lesions=True)
}
NON_BRAIN = (0, 258, 165, 262)
_INTRACRANIAL = tuple(label for label in TISSUES if label not in NON_BRAIN)  # the brain mask
LEFT_TO_RIGHT = {2: 41, 3: 42, 7: 46, 8: 47}  # painted left, split at the midline
_CODES = np.array(sorted(TISSUES), dtype=np.int16)  # tissue index -> label
_CHI, _R2STAR, _PD = (np.array([TISSUES[c][i] for c in _CODES], np.float32) for i in (1, 2, 3))
DEFAULT_SHAPE = (96, 112, 80)  # 192 x 224 x 160 mm at 2 mm: the head with air around it
DEFAULT_ECHO_TIMES = (0.004, 0.010, 0.016, 0.022, 0.028)  # s, a typical 3 T QSM protocol


@dataclass(frozen=True)
class Shape:
    """A region of head-frame space: `inside(x, y, z)` (mm) -> bool, within a bounding sphere."""

    inside: Callable
    center: tuple
    radius: float


def ellipsoid(center, semi, *, rz_deg=0.0, modulation=None, level=1.0):
    """Ellipsoid (mm), rotated by `rz_deg` about z; `modulation(x, y, z)` bends its surface."""
    (cx, cy, cz), (ax, ay, az) = (map(float, center)), (map(float, semi))
    cos, sin = float(np.cos(np.radians(rz_deg))), float(np.sin(np.radians(rz_deg)))

    def inside(x, y, z):
        dx, dy = x - cx, y - cy
        if sin:
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        r2 = (dx / ax) ** 2 + (dy / ay) ** 2 + ((z - cz) / az) ** 2
        if modulation is None:
            return r2 < level**2
        return np.sqrt(r2) < level + modulation(x, y, z)

    return Shape(inside, (cx, cy, cz), max(ax, ay, az) * (level + 0.1))


def capsule(a, b, radius):
    """Segment a-b (mm) thickened by `radius`: one piece of a vessel."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    (ax, ay, az), (ux, uy, uz) = a.tolist(), (b - a).tolist()
    length2 = ux * ux + uy * uy + uz * uz

    def inside(x, y, z):
        dx, dy, dz = x - ax, y - ay, z - az
        t = np.clip((dx * ux + dy * uy + dz * uz) / length2, 0.0, 1.0)
        return (dx - t * ux) ** 2 + (dy - t * uy) ** 2 + (dz - t * uz) ** 2 < radius**2

    return Shape(inside, tuple((a + b) / 2), float(np.sqrt(length2)) / 2 + radius)


def tube(points, radius):
    """Capsules along a polyline (mm): a vessel of constant `radius`."""
    p = np.asarray(points, float)
    return [capsule(a, b, radius) for a, b in zip(p[:-1], p[1:], strict=True)]


def neck(center_xy, semi_xy, z_top):
    """Elliptic cylinder of soft tissue below `z_top` (mm), leaving the field of view."""

    def inside(x, y, z):
        r2 = ((x - center_xy[0]) / semi_xy[0]) ** 2 + ((y - center_xy[1]) / semi_xy[1]) ** 2
        return (r2 < 1.0) & (z < z_top)

    return Shape(inside, (center_xy[0], center_xy[1], z_top - 200.0), 260.0)


def _folds(phases):
    """Smooth +-1 cortical folding pattern (wavelength about 2 cm), phases (rad) per subject."""

    def fold(x, y, z):
        return (
            np.sin(2 * np.pi * x / 23 + phases[0])
            * np.sin(2 * np.pi * y / 27 + phases[1])
            * np.sin(2 * np.pi * z / 21 + phases[2])
        )

    return fold


def _pair(left_label, right_label, center, semi, rz_deg=0.0):
    """A left (x < 0) and right ellipsoid pair from the description of the left one."""
    x, y, z = center
    return [
        (left_label, ellipsoid((x, y, z), semi, rz_deg=rz_deg), None),
        (right_label, ellipsoid((-x, y, z), semi, rz_deg=-rz_deg), None),
    ]


def head_structures(fold_phases=(0.3, 1.1, 2.0)):
    """Painting list [(label, Shape, labels it may overwrite or None = any)], in order.

    Cerebrum and cerebellum are painted with their left labels and split at x = 0 afterwards
    (`LEFT_TO_RIGHT`). Dimensions in mm, head frame; `fold_phases` (rad) vary the gyri.
    """
    fold, sulcus = _folds(fold_phases), _folds(np.asarray(fold_phases) + 1.7)
    brain = {"center": (0, -4, 10), "semi": (57, 76, 52)}
    deep_cortex = ellipsoid(**brain, level=0.93).inside

    def sulci(x, y, z):  # CSF clefts in the outer cortex
        return (sulcus(x, y, z) < -0.45) & ~deep_cortex(x, y, z)

    theta = np.radians(np.linspace(20, 195, 9))
    sagittal = np.c_[0 * theta, 78 * np.cos(theta) - 4, 54 * np.sin(theta) + 8]
    veins = {  # polyline (mm), radius (mm)
        "superior sagittal sinus": (sagittal, 3.0),
        "straight sinus": ([(0, -30, 12), (0, -74, -6)], 2.5),
        "transverse sinuses": ([(-50, -50, -26), (-30, -74, -16), (0, -80, -4), (30, -74, -16),
                                (50, -50, -26)], 3.0),
        "left internal cerebral vein": ([(-2.5, 8, 18), (-2.5, -28, 14), (0, -30, 12)], 1.5),
        "right internal cerebral vein": ([(2.5, 8, 18), (2.5, -28, 14), (0, -30, 12)], 1.5),
        "left cortical vein": ([(-45, 10, 38), (-30, -20, 50), (-12, -40, 58)], 1.5),
        "right cortical vein": ([(42, 30, 34), (30, 0, 52), (10, -15, 60)], 1.5),
    }  # fmt: skip
    return [
        (258, ellipsoid((0, -4, 2), (72, 92, 70)), None),  # scalp
        (258, ellipsoid((0, 50, -40), (46, 40, 32)), None),  # face
        (258, neck((0, -14), (46, 50), -20), None),
        (165, ellipsoid((0, -4, 6), (66, 86, 62)), None),
        (262, ellipsoid((0, 66, -34), (14, 10, 10)), None),  # frontal sinus
        (24, ellipsoid((0, -4, 8), (60, 80, 56)), None),  # intracranial space
        (3, ellipsoid(**brain, modulation=lambda x, y, z: 0.025 * fold(x, y, z)), (24,)),
        (2, ellipsoid(**brain, level=0.88, modulation=lambda x, y, z: 0.05 * fold(x, y, z)), (3,)),
        (24, Shape(sulci, brain["center"], 90.0), (3,)),
        (8, ellipsoid((0, -52, -28), (46, 26, 19)), _INTRACRANIAL),
        (7, ellipsoid((0, -50, -27), (30, 15, 11)), (8,)),
        (16, ellipsoid((0, -20, -28), (13, 14, 26)), _INTRACRANIAL),
        (15, ellipsoid((0, -36, -28), (5, 4, 6)), None),
        (24, Shape(lambda x, y, z: (np.abs(x) < 1.2) & (z > 22), (0, -4, 40), 90.0), (2, 3)),
        *_pair(12, 51, (-25, 2, 4), (6, 17, 11)),
        *_pair(13, 52, (-18, -2, 2), (4, 9, 6)),
        *_pair(11, 50, (-14, 10, 16), (5, 13, 8)),
        *_pair(10, 49, (-9, -18, 8), (8, 15, 9)),
        *_pair(4, 43, (-9, -6, 20), (6, 28, 8), rz_deg=-8),
        (14, ellipsoid((0, -14, 6), (2.5, 12, 8)), None),
        *_pair(27, 59, (-10, -16, -12), (3.5, 8, 3), rz_deg=-30),
        *_pair(9001, 9002, (-5, -19, -8), (3.5, 3.5, 3.5)),
        *_pair(9003, 9004, (-15, -56, -28), (5, 7, 5), rz_deg=20),
        *[(9005, piece, _INTRACRANIAL) for p, r in veins.values() for piece in tube(p, r)],
        (9006, ellipsoid((24, 28, 26), (3, 3, 3)), None),
        (9007, ellipsoid((-28, -34, 30), (2.5, 2.5, 2.5)), None),
    ]  # fmt: skip


@dataclass
class PhantomScan:
    """One simulated MEGRE run and its truth, all on the acquired (X, Y, Z) grid."""

    magnitude: np.ndarray  # (X, Y, Z, N) float32, arbitrary units
    phase: np.ndarray  # (X, Y, Z, N) float32 rad in [-pi, pi), or int16 Siemens units
    echo_times: np.ndarray  # (N,) s
    b0: float  # T
    affine: np.ndarray  # 4x4, voxel -> scanner mm (RAS+); B0 along scanner z
    chi: np.ndarray  # ppm relative to water, as simulated (not referenced)
    labels: np.ndarray  # int16, keys of TISSUES
    mask: np.ndarray  # bool, intracranial labels
    r2star: np.ndarray  # 1/s of the tissue (no macroscopic dephasing), 0 outside the mask
    field_hz: np.ndarray  # total field (Hz), everywhere
    local_field_hz: np.ndarray  # field (Hz) of chi inside the mask (CSF = 0), 0 outside
    phase_offset: np.ndarray  # receive phase (rad) common to all echoes
    noise_sigma: float  # standard deviation of the real and the imaginary noise
    phase_units: str  # "rad" or "arbitrary" (Siemens -4096..4095)
    label_names: dict = field(default_factory=lambda: {c: t[0] for c, t in TISSUES.items()})


def acquisition_affine(shape, voxel_size, tilt_deg=0.0):
    """Voxel -> scanner mm of a grid centred on the isocentre and pitched by `tilt_deg` about x."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("x", tilt_deg, degrees=True).as_matrix() * voxel_size
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _head_pose(tilt_deg, anatomy=None, rng=None):
    """4x4 head frame -> scanner mm: the head pitched by `tilt_deg`; Generators `anatomy` scale
    it by up to 4 % per axis, `rng` turns it by up to 3 degrees and shifts it by up to 3 mm."""
    pose = acquisition_affine((1, 1, 1), (1, 1, 1), tilt_deg)
    jitter = np.eye(4)
    if anatomy is not None:
        jitter[:3, :3] = np.diag(anatomy.uniform(0.96, 1.04, 3))
    if rng is not None:
        turn = Rotation.from_euler("xyz", rng.uniform(-3, 3, 3), degrees=True).as_matrix()
        jitter[:3, :3] = turn @ jitter[:3, :3]
        jitter[:3, 3] = rng.uniform(-3, 3, 3)
    return pose @ jitter


def _grid(shape, vox_to_head, lo, hi):
    """Head-frame coordinates (mm) of voxels lo..hi-1 of a grid, float32 arrays."""
    idx = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]
    i, j, k = idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]
    m = vox_to_head.astype(np.float32)
    return tuple(m[r, 0] * i + m[r, 1] * j + m[r, 2] * k + m[r, 3] for r in range(3))


def paint(shape, vox_to_head, structures, *, index=None, codes=_CODES):
    """Tissue index (into `codes`, uint8) of each voxel: the structures painted in order, on a
    new grid of `shape` or over an existing `index`."""
    if index is None:
        index = np.zeros(shape, np.uint8)
    to_index = {int(c): i for i, c in enumerate(codes)}
    head_to_vox = np.linalg.inv(vox_to_head)
    reach = np.linalg.norm(head_to_vox[:3, :3], axis=1)
    for label, region, within in structures:
        centre = head_to_vox[:3, :3] @ region.center + head_to_vox[:3, 3]
        lo = np.clip(np.floor(centre - region.radius * reach), 0, shape).astype(int)
        hi = np.clip(np.ceil(centre + region.radius * reach) + 1, 0, shape).astype(int)
        if np.any(hi <= lo):
            continue
        box = index[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        hit = region.inside(*_grid(shape, vox_to_head, lo, hi))
        if within is not None:
            hit &= np.isin(box, [to_index[w] for w in within if w in to_index])
        box[hit] = to_index[label]
    return index


def _split_hemispheres(index, vox_to_head):
    """Relabel, in place, the left labels of `LEFT_TO_RIGHT` painted at x > 0 (head frame)."""
    to_index = {int(c): i for i, c in enumerate(_CODES)}
    x = _grid(index.shape, vox_to_head, (0, 0, 0), index.shape)[0]
    for left, right in LEFT_TO_RIGHT.items():
        index[(index == to_index[left]) & (x > 0)] = to_index[right]


def _block_sum(a, k, dtype=np.float32):
    """Sum over each k x k x k block of a 3-D array (acquired voxel from the fine grid)."""
    out = np.zeros(tuple(n // k for n in a.shape), dtype)
    for i in range(k**3):
        out += a[i // (k * k) :: k, i // k % k :: k, i % k :: k]
    return out


def _block_mean(a, k):
    """Mean over each k x k x k block (float32)."""
    return _block_sum(a, k) / np.float32(k**3)


def _upsample(a, k):
    """Each acquired voxel repeated over its k x k x k block of the fine grid."""
    return np.repeat(np.repeat(np.repeat(a, k, axis=0), k, axis=1), k, axis=2)


@njit(parallel=True, cache=True)
def _block_majority(index, k):
    """The most frequent tissue index in each k x k x k block (ties: the lowest index)."""
    best = np.zeros((index.shape[0] // k, index.shape[1] // k, index.shape[2] // k), np.uint8)
    for i in prange(best.shape[0]):
        count = np.zeros(256, np.int32)
        for j in range(best.shape[1]):
            for m in range(best.shape[2]):
                count[:] = 0
                for a in range(i * k, i * k + k):
                    for b in range(j * k, j * k + k):
                        for c in range(m * k, m * k + k):
                            count[index[a, b, c]] += 1
                best[i, j, m] = np.argmax(count)
    return best


def _smooth_polynomial(shape, coefficients):
    """c0 + linear + quadratic terms in u in [-1, 1] along each voxel axis (float32)."""
    u0, u1, u2 = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    u0, u1, u2 = u0[:, None, None], u1[None, :, None], u2[None, None, :]
    terms = [u0, u1, u2, u0 * u1, u1 * u2, u0 * u2, u0 * u0, u1 * u1, u2 * u2]
    out = np.full(shape, coefficients[0], np.float32)
    for c, term in zip(coefficients[1:], terms, strict=False):
        out += np.float32(c) * term
    return out


@njit(cache=True)
def _harmonics(x, y, z):
    """Solid spherical harmonics of order 0 to 2 (what a scanner's second-order shim holds)."""
    return (x * 0 + 1, x, y, z, x * y, y * z, x * z, x * x - y * y, 2 * z * z - x * x - y * y)


@njit(parallel=True, cache=True)
def _subtract_harmonics(field_hz, vox_to_unit, coefficients):
    """field_hz -= sum of coefficients x `_harmonics` at each voxel's coordinates (in place)."""
    m = vox_to_unit
    for i in prange(field_hz.shape[0]):
        for j in range(field_hz.shape[1]):
            for k in range(field_hz.shape[2]):
                x = m[0, 0] * i + m[0, 1] * j + m[0, 2] * k + m[0, 3]
                y = m[1, 0] * i + m[1, 1] * j + m[1, 2] * k + m[1, 3]
                z = m[2, 0] * i + m[2, 1] * j + m[2, 2] * k + m[2, 3]
                terms = _harmonics(x, y, z)
                value = 0.0
                for n in range(9):
                    value += coefficients[n] * terms[n]
                field_hz[i, j, k] -= value


def _shim(field_hz, brain, vox_to_mm):
    """Subtract, in place, the harmonics fitted to the field over the brain, as the scanner's
    shim does; being harmonic, what remains of the background field stays harmonic."""
    sample = np.flatnonzero(brain)[:: max(1, int(brain.sum()) // 50000)]
    if sample.size < 100:  # nothing to shim on
        return
    xyz = vox_to_mm[:3, :3] @ np.array(np.unravel_index(sample, brain.shape)) + vox_to_mm[:3, 3:]
    to_unit = np.eye(4) / 100  # mm -> 10 cm about the brain's centre, a well-scaled fit
    to_unit[:3, 3], to_unit[3, 3] = -xyz.mean(axis=1) / 100, 1.0
    design = np.stack(_harmonics(*(to_unit[:3, :3] @ xyz + to_unit[:3, 3:])), axis=1)
    coefficients = np.linalg.lstsq(design, field_hz.ravel()[sample], rcond=None)[0]
    _subtract_harmonics(field_hz, to_unit @ vox_to_mm, coefficients)


def simulate_head(
    *,
    shape=DEFAULT_SHAPE,
    voxel_size=(2.0, 2.0, 2.0),
    echo_times=DEFAULT_ECHO_TIMES,
    b0=3.0,
    snr=100.0,
    tilt_deg=0.0,
    seed=0,
    oversample=2,
    phase_units="rad",
    subject=0,
    session=0,
    lesions=False,
):
    """Simulate one MEGRE run of the head phantom.

    shape: acquired voxels; voxel_size: mm; echo_times: s; b0: T; snr: mean brain magnitude of
    echo 1 over the noise sigma (inf: no noise); tilt_deg: head pitch about scanner x (the grid
    follows the head, so the affine becomes oblique); oversample: fine voxels per acquired voxel
    edge; phase_units: "rad" or "siemens". subject 0 is the canonical head; subject > 0 jitters
    size, pose and gyri from (seed, subject, session); lesions: paint the clinical findings of
    `bids_qsm.phantom_lesions` too. Returns a `PhantomScan`.
    """
    k = int(oversample)
    anatomy = np.random.default_rng([seed, subject]) if subject else None
    rng = np.random.default_rng([seed, subject, session, 1])
    affine = acquisition_affine(shape, voxel_size, tilt_deg)
    pose = _head_pose(tilt_deg, anatomy, rng if subject else None)
    fine_shape = tuple(int(n) * k for n in shape)
    folds = (0.3, 1.1, 2.0) if anatomy is None else anatomy.uniform(0, 2 * np.pi, 3)
    structures = head_structures(folds) + (lesion_structures() if lesions else [])
    vox_to_head = np.linalg.inv(pose) @ affine @ fine_grid(k)
    index = paint(fine_shape, vox_to_head, structures)
    _split_hemispheres(index, vox_to_head)
    return acquire_scan(
        index,
        _CODES,
        chi=_CHI[index],
        r2star=_R2STAR[index],
        pd=_PD[index],
        brain_labels=_INTRACRANIAL,
        affine=affine,
        oversample=k,
        echo_times=echo_times,
        b0=b0,
        snr=snr,
        rng=rng,
        phase_units=phase_units,
    )


def fine_grid(k):
    """4x4 fine voxel -> acquired voxel of a grid `k` times finer (block centres agree)."""
    fine = np.eye(4)
    fine[:3, :3] /= k
    fine[:3, 3] = (1 / k - 1) / 2
    return fine


def polynomial_offset(shape, rng):
    """The receive phase (rad) common to all echoes: a random second-order polynomial across
    the grid, a few radians end to end; its curvature may vanish (then it is harmonic)."""
    coefficients = [rng.uniform(-np.pi, np.pi), *rng.uniform(-0.8, 0.8, 3)]
    return _smooth_polynomial(shape, [*coefficients, *rng.uniform(-0.4, 0.4, 6)])


def curved_offset(shape, rng):
    """`polynomial_offset` whose three square terms share one sign, 1 to 2 rad each: its
    Laplacian never vanishes, so no harmonic (background field) model can absorb it."""
    coefficients = [rng.uniform(-np.pi, np.pi), *rng.uniform(-0.8, 0.8, 3)]
    squares = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0, 3)
    return _smooth_polynomial(shape, [*coefficients, *rng.uniform(-0.4, 0.4, 3), *squares])


def acquire_scan(
    index,
    codes,
    *,
    chi,
    r2star,
    pd,
    brain_labels,
    affine,
    oversample,
    echo_times,
    b0,
    snr,
    rng,
    phase_units="rad",
    offset=polynomial_offset,
    label_names=None,
):
    """The MEGRE run of a head painted on a fine grid, and its truth on the acquired grid.

    index: uint8 tissue index into `codes` (labels) on the grid `oversample` (k) times finer
    than the acquired grid of `affine` (voxel -> scanner mm, B0 along scanner z; fine voxel ->
    acquired voxel by `fine_grid(k)`); chi (ppm vs water), r2star (1/s), pd: float32 per fine
    voxel, overwritten here. brain_labels: the labels that make the brain mask; the field of
    their sources is the local field. echo_times: s; b0: T; snr: mean brain magnitude of echo 1
    over the noise sigma (inf: no noise); rng: numpy Generator (offset, receive bias, noise);
    offset(fine shape, rng): the phase (rad) common to all echoes; label_names: {label: name}
    (default: `TISSUES`). Returns a `PhantomScan`.
    """
    te = np.asarray(echo_times, dtype=np.float64)
    k = int(oversample)
    voxel_size = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    b0_dir = b0_direction(affine)
    inner = np.isin(index, np.flatnonzero(np.isin(codes, brain_labels)))  # the brain's sources
    labels = codes[_block_majority(index, k)]
    mask = np.isin(labels, brain_labels)
    if mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any():
        logger.warning("the field of view cuts the brain: enlarge --shape or --voxel-size")
    # truth inside the mask averages the brain's fine voxels only: bone partial volume at
    # the edge belongs to the background, as for any background field removal
    count = np.maximum(_block_sum(inner, k), 1)
    chi_acq = np.where(mask, _block_sum(chi * inner, k) / count, _block_mean(chi, k))
    r2star_acq = np.where(mask, _block_sum(r2star * inner, k) / count, 0).astype(np.float32)

    # The brain's own field is made on the acquired grid from the true chi, as the pipeline
    # models it, so that the stored local field is exactly the local part of the data (a field
    # averaged from sub-voxel sources would not be, and no method could recover it). Sources
    # outside the brain (air, bone, scalp) act from the fine grid, with the gradients that
    # dephase within a voxel; inside the mask they see water.
    hz = np.float32(hz_per_ppm(b0))
    local_hz = forward_field(chi_acq * mask, voxel_size, b0_dir) * hz
    chi[_upsample(mask, k)] = 0
    chi -= np.float32(CHI_AIR)  # the zero padding is air
    field_hz = _background_field(chi, voxel_size / k, b0_dir, pad=tuple(n // 8 for n in chi.shape))
    del chi
    field_hz *= hz
    field_hz += _upsample(local_hz, k)
    _shim(field_hz, inner, affine @ fine_grid(k))
    del inner
    phase_offset = offset(index.shape, rng)
    pd *= np.exp(_smooth_polynomial(index.shape, [0.0, *rng.uniform(-0.15, 0.15, 3)]))
    # the complex mean over each block: partial volume and intravoxel dephasing
    signal = _block_signal(pd, r2star, field_hz, phase_offset, te, k)
    field_acq = _block_mean(field_hz, k)
    offset_acq = _block_mean(phase_offset, k)
    del field_hz, pd, r2star, phase_offset

    sigma = float(np.abs(signal[..., 0])[mask].mean() / snr) if np.isfinite(snr) else 0.0
    noise = rng.standard_normal((2, *signal.shape), dtype=np.float32) * np.float32(sigma)
    signal += noise[0] + 1j * noise[1]
    del noise
    phase = np.angle(signal)  # float32 in [-pi, pi]; +pi -> -pi, in float32
    phase[phase >= np.float32(np.pi)] = -np.float32(np.pi)
    local_hz *= mask
    if phase_units == "siemens":
        phase = np.clip(np.round(phase / np.pi * 4096), -4096, 4095).astype(np.int16)
    names = {int(c): TISSUES[int(c)][0] for c in codes if int(c) in TISSUES}
    return PhantomScan(
        magnitude=np.abs(signal).astype(np.float32),
        phase=phase,
        echo_times=te,
        b0=float(b0),
        affine=np.asarray(affine, dtype=float),
        chi=chi_acq.astype(np.float32),
        labels=labels,
        mask=mask,
        r2star=r2star_acq,
        field_hz=field_acq,
        local_field_hz=local_hz.astype(np.float32),
        phase_offset=offset_acq,
        noise_sigma=sigma,
        phase_units="arbitrary" if phase_units == "siemens" else "rad",
        label_names={**names, **(label_names or {})},
    )


def _background_field(chi, voxel_size, b0_dir, *, pad, workers=-1):
    """`forward_field` (ppm) of a large fine grid: the dipole kernel made one slab at a time
    on the half spectrum of the real FFT, so that it never fills a grid of its own."""
    padded = np.pad(chi, [(p, p) for p in pad])
    n = padded.shape
    spectrum = scipy.fft.rfftn(padded, workers=workers)
    del padded
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    kx, ky = (scipy.fft.fftfreq(n[i], voxel_size[i]).astype(np.float32) for i in (0, 1))
    kz = scipy.fft.rfftfreq(n[2], voxel_size[2]).astype(np.float32)
    ky, kz = ky[:, None], kz[None, :]
    yz2, yzb = ky**2 + kz**2, np.float32(b[1]) * ky + np.float32(b[2]) * kz
    for i, x in enumerate(kx):
        k2, kb = yz2 + x * x, yzb + np.float32(b[0]) * x
        with np.errstate(divide="ignore", invalid="ignore"):
            kernel = np.float32(1 / 3) - kb * kb / k2
        if i == 0:
            kernel[0, 0] = 0.0
        spectrum[i] *= kernel
    field = scipy.fft.irfftn(spectrum, s=n, workers=workers)
    crop = tuple(slice(p, p + m) for p, m in zip(pad, chi.shape, strict=True))
    return np.ascontiguousarray(field[crop])


@njit(parallel=True, fastmath=True, cache=True)
def _block_signal(pd, r2star, field_hz, offset, echo_times, k):
    """Complex mean over each k x k x k block of PD exp(-R2* TE) exp(i (2 pi f TE + offset))
    at each echo time (s): (X, Y, Z, N) complex64 from fine-grid float32 maps."""
    nx, ny, nz = pd.shape[0] // k, pd.shape[1] // k, pd.shape[2] // k
    n_te = echo_times.size
    out = np.zeros((nx, ny, nz, n_te), np.complex64)
    scale, two_pi = np.float32(1.0 / k**3), np.float32(2 * np.pi)
    for i in prange(nx):
        re = np.zeros(n_te, np.float32)
        im = np.zeros(n_te, np.float32)
        for j in range(ny):
            for m in range(nz):
                re[:] = 0
                im[:] = 0
                for a in range(i * k, i * k + k):
                    for b in range(j * k, j * k + k):
                        for c in range(m * k, m * k + k):
                            if pd[a, b, c] == 0:  # air and bone: no signal
                                continue
                            for n in range(n_te):
                                t = np.float32(echo_times[n])
                                decay = pd[a, b, c] * np.exp(-r2star[a, b, c] * t)
                                phase = two_pi * t * field_hz[a, b, c] + offset[a, b, c]
                                re[n] += decay * np.cos(phase)
                                im[n] += decay * np.sin(phase)
                for n in range(n_te):
                    out[i, j, m, n] = complex(re[n] * scale, im[n] * scale)
    return out


README = """Simulated multi-echo GRE head scans written by bids_qsm-phantom.
The truth (chi in ppm relative to water, labels, R2* in 1/s, fields in Hz) is under
derivatives/phantom; demean chi inside the brain mask before comparing it with a referenced map.
"""


def _save(path, data, affine, sidecar=None):
    """NIfTI (+ JSON sidecar) with the scanner affine in both sform and qform."""
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    if sidecar is not None:
        _write_json(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _is_phantom(out_dir):
    try:
        description = json.loads((out_dir / "dataset_description.json").read_text())
        return description["GeneratedBy"][0]["Name"] == GENERATOR
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def _clear(out_dir):
    """Make `out_dir` empty, or raise FileExistsError if it holds anything but a phantom."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not out_dir.is_dir() or not _is_phantom(out_dir):
        raise FileExistsError(f"{out_dir} is neither an empty folder nor a {GENERATOR} dataset")
    for entry in out_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _write_run(out_dir, entities, path_parts, scan):
    """The raw MEGRE echoes of one run and their truth under derivatives/phantom."""
    anat = out_dir.joinpath(*path_parts, "anat")
    common = {
        "MagneticFieldStrength": scan.b0,
        "Manufacturer": "bids_qsm phantom",
        "ManufacturersModelName": GENERATOR,
        "MRAcquisitionType": "3D",
        "RepetitionTime": round(float(scan.echo_times[-1]) + 0.008, 6),
        "FlipAngle": 15,
    }
    files = []  # (path, data, sidecar)
    for n, te in enumerate(scan.echo_times):
        stem = f"{entities}_echo-{n + 1}_part-"
        sidecar = {"EchoTime": round(float(te), 6), **common}
        files.append((anat / f"{stem}mag_MEGRE.nii.gz", scan.magnitude[..., n], sidecar))
        sidecar = {**sidecar, "Units": scan.phase_units}
        files.append((anat / f"{stem}phase_MEGRE.nii.gz", scan.phase[..., n], sidecar))
    truth = out_dir.joinpath("derivatives", "phantom", *path_parts, "anat")
    chi_note = "true chi relative to water, not referenced: demean it in the brain mask"
    maps = [
        ("Chimap", scan.chi, {"Units": "ppm", "SkullStripped": False, "Description": chi_note}),
        ("desc-brain_mask", scan.mask.astype(np.uint8), {"Type": "Brain"}),
        ("dseg", scan.labels, None),
        ("R2starmap", scan.r2star, {"Units": "1/s", "SkullStripped": True}),
        # below: no BIDS name yet (.bidsignore); fields in Hz, offset = receive phase
        ("desc-total_fieldmap", scan.field_hz, {"Units": "Hz"}),
        ("desc-local_fieldmap", scan.local_field_hz, {"Units": "Hz"}),
        ("desc-offset_phasemap", scan.phase_offset, {"Units": "rad"}),
    ]
    files += [(truth / f"{entities}_{suffix}.nii.gz", data, side) for suffix, data, side in maps]
    # gzip releases the GIL: one file per core
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(lambda file: _save(file[0], file[1], scan.affine, file[2]), files))


def write_dataset(
    out_dir, *, subjects=1, sessions=0, simulate=None, name="head phantom", **scan_kwargs
):
    """Write a raw BIDS MEGRE dataset of `subjects` phantoms (`sessions` each, 0: no session
    level) with the truth under derivatives/phantom. `simulate(subject=, session=,
    **scan_kwargs)` makes each `PhantomScan` (default `simulate_head`); `name` goes into the
    dataset descriptions. Raises FileExistsError when `out_dir` holds anything other than an
    earlier phantom."""
    out_dir = Path(out_dir)
    simulate = simulate_head if simulate is None else simulate
    _clear(out_dir)
    about = {
        "BIDSVersion": "1.10.0",
        "License": "CC0",
        "Authors": ["bids_qsm developers"],
        "GeneratedBy": [{"Name": GENERATOR, "Version": __version__}],
    }
    truth = out_dir / "derivatives" / "phantom"
    for root, suffix, kind in [(out_dir, "", "raw"), (truth, " truth", "derivative")]:
        description = {"Name": f"bids_qsm {name}{suffix}", "DatasetType": kind, **about}
        _write_json(root / "dataset_description.json", description)
        (root / "README").write_text(README)
    (out_dir / ".bidsignore").write_text("derivatives/\n")
    (truth / ".bidsignore").write_text("*_fieldmap.*\n*_phasemap.*\n")
    labels, names = [f"{s:02d}" for s in range(1, subjects + 1)], {}
    (out_dir / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in labels)
    )
    for subject, label in enumerate(labels, start=1):
        for session in range(1, sessions + 1) if sessions else [0]:
            parts = [f"sub-{label}"] + ([f"ses-{session:02d}"] if session else [])
            scan = simulate(**scan_kwargs, subject=subject, session=session)
            _write_run(out_dir, "_".join(parts), parts, scan)
            names.update(scan.label_names)
            logger.info("wrote %s", "/".join(parts))
    (truth / "dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{c}\t{names[c]}\n" for c in sorted(names))
    )
    if scan_kwargs.get("lesions"):
        write_lesion_dir(out_dir)  # what --lesion-dir reads
    return out_dir


def _build_parser():
    parser = argparse.ArgumentParser(
        prog=GENERATOR,
        description="Write a simulated multi-echo GRE head dataset (BIDS) with ground truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    # fmt: off
    add("out_dir", type=Path, metavar="OUT", help="output BIDS dataset folder")
    add("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
        help="acquired voxels (default: 96 112 80; with --chi-map: the head and 4 mm of air)")
    add("--voxel-size", "--voxel_size", type=float, nargs=3, metavar=("MM", "MM", "MM"),
        help="voxel edges (mm) (default: 2 2 2; with --chi-map: the map's)")
    add("--echo-times", "--echo_times", type=float, nargs="+", default=DEFAULT_ECHO_TIMES,
        metavar="S", help="echo times (s), ascending")
    add("--b0", type=float, default=3.0, metavar="T", help="field strength (T)")
    add("--snr", type=float, default=100.0, help="brain SNR of echo 1 (inf: no noise)")
    add("--tilt", type=float, default=0.0, metavar="DEG", dest="tilt_deg",
        help="head pitch about scanner x (deg); the grid follows the head: oblique affine")
    add("--seed", type=int, default=0, help="random seed (anatomy jitter, phase, noise)")
    add("--subjects", type=int, default=1, metavar="N", help="number of subjects")
    add("--sessions", type=int, default=0, metavar="N", help="sessions per subject (0: none)")
    add("--phase-units", "--phase_units", choices=("rad", "siemens"), default="rad",
        help="rad, or Siemens integers -4096..4095 (Units: arbitrary)")
    add("--oversample", type=int, default=2, metavar="K",
        help="simulate on a K times finer grid (partial volume, intravoxel dephasing); with "
             "1, sharp air and bone edges leave a background field that is not harmonic in "
             "the brain, and background removal is not tested fairly")
    add("--lesions", action="store_true",
        help="plant a rim lesion, a rimless lesion, microbleeds and calcifications "
             "(bids_qsm.phantom_lesions) and write their masks under derivatives/lesions")
    add("--chi-map", "--chi_map", type=Path, metavar="FILE",
        help="a real susceptibility map (NIfTI, ppm; 0 or NaN outside the brain) to be the "
             "brain of the head: the realistic-brain fixture of bids_qsm.phantom_chimap")
    add("--labels", type=Path, metavar="FILE",
        help="with --chi-map: integer labels on its grid (0 outside the brain, e.g. a "
             "FreeSurfer aseg): the brain mask and the R2* of the tissues they name")
    add("--chi-axcodes", "--chi_axcodes", metavar="XYZ",
        help="with --chi-map: where its voxel axes point when its header says otherwise, e.g. "
             "RPS for the 2016 challenge's COSMOS map")
    add("--no-foci", "--no_foci", dest="foci", action="store_false",
        help="with --chi-map: plant no microbleed and no calcification")
    # fmt: on
    return parser


def _check(parser, args):
    """One line and exit 2 for arguments that cannot make a dataset."""
    te = np.asarray(args.echo_times)
    chi_only = args.labels or args.chi_axcodes or not args.foci
    axcodes = str(args.chi_axcodes or "RAS").upper()
    problems = [
        (
            args.shape is not None and min(args.shape) < 8,
            "--shape needs at least 8 voxels per axis",
        ),
        (
            args.voxel_size is not None and min(args.voxel_size) <= 0,
            "--voxel-size must be positive",
        ),
        (te.min() <= 0 or np.any(np.diff(te) <= 0), "--echo-times must be positive and ascending"),
        (args.b0 <= 0, "--b0 must be positive"),
        (not args.snr > 0, "--snr must be positive"),
        (abs(args.tilt_deg) > 45, "--tilt must be within +-45 degrees"),
        (args.subjects < 1 or args.subjects > 99, "--subjects must be 1..99"),
        (args.sessions < 0 or args.sessions > 99, "--sessions must be 0..99"),
        (not 1 <= args.oversample <= 4, "--oversample must be 1..4"),
        (args.chi_map is None and chi_only, "--labels, --chi-axcodes and --no-foci need --chi-map"),
        (args.chi_map is not None and args.lesions, "--lesions is for the head phantom only"),
        (
            len(axcodes) != 3
            or sorted(axcodes.translate(str.maketrans("RLAPSI", "xxyyzz"))) != ["x", "y", "z"],
            "--chi-axcodes takes one of R/L, A/P and S/I each, e.g. RPS",
        ),
    ]
    for failed, message in problems:
        if failed:
            parser.error(message)


def main(argv=None) -> int:
    """Console entry point of `bids_qsm-phantom`; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    options = vars(args)
    out_dir, chi_map = options.pop("out_dir"), options.pop("chi_map")
    labels, axcodes, foci = options.pop("labels"), options.pop("chi_axcodes"), options.pop("foci")
    if chi_map is None:
        options["shape"] = options["shape"] or DEFAULT_SHAPE
        options["voxel_size"] = options["voxel_size"] or (2.0, 2.0, 2.0)
    else:
        from bids_qsm.phantom_chimap import load_chi_map, simulate_from_chi_map

        try:
            chi, affine, label_image = load_chi_map(chi_map, labels=labels, axcodes=axcodes)
        except ValueError as error:
            print(f"{GENERATOR}: error: {error}", file=sys.stderr)
            return 66
        del options["lesions"]
        simulate = partial(simulate_from_chi_map, chi, affine, label_image, foci=foci)
        options.update(simulate=simulate, name="chi-map head phantom")
    try:
        out = write_dataset(out_dir, **options)
    except FileExistsError as error:
        print(f"{GENERATOR}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a read-only place: one line, no traceback
        print(f"{GENERATOR}: error: cannot write {args.out_dir}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"{GENERATOR}: wrote {out}")
    return 0
