"""A realistic-brain fixture: a measured susceptibility map placed in the simulated head.

The brain is a real chi map (ppm; e.g. the COSMOS map of the 2016 QSM challenge), resampled into
the head frame of `bids_qsm.phantom`; the rest of the head is built around it and simulated with
the phantom's own physics (`acquire_scan`: air, bone and scalp sources on the oversampled grid,
second-order shim, T2* decay, partial volume and intravoxel dephasing, complex noise, oblique
affine for a tilted head). Around the brain, at distances (mm) from its surface: CSF to
`CSF_MM`, skull to `SKULL_MM` further, scalp `SCALP_MM` further; a face and a neck of soft tissue;
air in the frontal and sphenoid sinuses, the nasal cavity, the maxillary sinuses, the mastoids and
the pharynx, placed along rays from the brain's centre so that the brain's edge meets thin bone
and air where a real one does.

The brain mask is where the map is defined (finite and non-zero, holes filled), or where a label
image is non-zero. Without labels the brain is `Brain` (9000), with a vein label (9005) where chi
exceeds `VEIN_PPM` in structures thinner than 5 voxels (a grey-level top-hat: the globus
pallidus, as wide as 10 mm, is left out); deep grey matter nuclei cannot be told from the map by
thresholds, so they are not labelled. R2* (1/s) comes from the labels that `TISSUES` knows,
elsewhere from chi: 18 + 130 |chi| at 3 T (white matter 22, pallidum 38, veins 44-70), scaled by
B0 / 3 T (R2* grows about linearly with the field). A microbleed (9007, +1 ppm) and a
calcification (9006, -1 ppm), balls of `FOCUS_MM`
radius, are planted in the brain at seeded places at least 12 mm deep (unless `foci=False`).

The receive phase common to all echoes is `curved_offset`: its Laplacian is nowhere zero, so it
cannot pass for a background field. The truth is that of `acquire_scan`: chi (ppm, the map's
values, not referenced), labels, brain mask, R2*, total and local field (Hz; the local field is
that of the sources in the mask only), receive phase (rad).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from numba import njit, prange
from scipy import ndimage as ndi

from bids_qsm.phantom import (
    _CODES,
    DEFAULT_ECHO_TIMES,
    NON_BRAIN,
    TISSUES,
    _head_pose,
    acquire_scan,
    acquisition_affine,
    capsule,
    curved_offset,
    ellipsoid,
    fine_grid,
    neck,
    paint,
)

BRAIN, VEIN, CALCIFICATION, MICROBLEED, CSF, SKULL, SOFT, AIR = (
    9000, 9005, 9006, 9007, 24, 165, 258, 262
)  # fmt: skip
CSF_MM, SKULL_MM, SCALP_MM = 2.5, 6.5, 6.0  # layer thickness (mm) around the brain's surface
MARGIN_MM = 4.0  # air around the scalp in the default field of view
CLOSE_MM = 20.0  # the scalp spans concavities of the grown brain narrower than twice this
VEIN_PPM = 0.2  # veins: chi above this (ppm) in structures thinner than 5 voxels
FOCUS_MM = 2.0  # radius of the planted microbleed and calcification
FOCUS_DEPTH_MM = 12.0  # at least this deep in the brain


def simulate_from_chi_map(
    chi,
    affine,
    labels=None,
    *,
    voxel_size=None,
    shape=None,
    echo_times=DEFAULT_ECHO_TIMES,
    b0=3.0,
    snr=100.0,
    tilt_deg=0.0,
    seed=0,
    oversample=2,
    phase_units="rad",
    foci=True,
    subject=0,
    session=0,
):
    """Simulate one MEGRE run of the head around a real susceptibility map.

    chi: 3-D map (ppm), 0 or NaN outside the brain; affine: its voxel -> mm (RAS+: x right,
    y anterior, z superior; see `reorient`); labels: optional integer image on the same grid
    (0 outside the brain; FreeSurfer numbers get `TISSUES` R2* values). voxel_size: acquired
    voxel edges (mm, default the map's); shape: acquired voxels (default: the head and
    `MARGIN_MM`); echo_times: s; b0: T; snr: mean brain magnitude of echo 1 over the noise sigma
    (inf: no noise); tilt_deg: head pitch about scanner x (the grid follows the head: oblique
    affine); oversample: fine voxels per acquired voxel edge; phase_units: "rad" or "siemens";
    foci: plant the microbleed and the calcification. (seed, subject, session) draw the receive
    phase and bias and the noise, (seed, subject) the places of the foci. Returns a
    `PhantomScan`.
    Raises ValueError for a map without a brain or labels on another grid.
    """
    chi, affine = np.asarray(chi, dtype=np.float32), np.asarray(affine, float)
    brain_map = brain_labels(chi, labels)
    map_vox = np.linalg.norm(affine[:3, :3], axis=0)
    k = int(oversample)
    voxel_size = map_vox if voxel_size is None else np.asarray(voxel_size, float)
    support = brain_map > 0
    lo, hi = _bounds(support)
    box = np.array([lo, hi - 1], float).T  # voxel bounding box
    world = affine[:3, :3] @ np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1)
    world += affine[:3, 3:]
    centre, half = (world.max(1) + world.min(1)) / 2, (world.max(1) - world.min(1)) / 2
    map_to_head = np.eye(4)
    map_to_head[:3, 3] = -centre
    map_to_head = map_to_head @ affine  # map voxel -> head mm, the brain centred on the origin
    outside = _outside_distance(support, map_vox)
    thickness = CSF_MM + SKULL_MM + SCALP_MM
    if shape is None:
        shape = tuple(int(8 * np.ceil((2 * (h + thickness + MARGIN_MM)) / v / 8))
                      for h, v in zip(half, voxel_size, strict=True))  # fmt: skip

    acquired = acquisition_affine(shape, voxel_size, tilt_deg)
    vox_to_head = np.linalg.inv(_head_pose(tilt_deg)) @ acquired @ fine_grid(k)
    fine_shape = tuple(int(n) * k for n in shape)
    map_codes = [int(c) for c in np.unique(brain_map) if c]
    codes = np.array(sorted({*(int(c) for c in _CODES), *map_codes}), np.int16)
    if codes.size > 256:
        raise ValueError(f"{len(map_codes)} labels: the head's tissues leave room for fewer")
    to_index = {int(c): i for i, c in enumerate(codes)}

    # the head, layer by layer from the outside in (paint order: later wins)
    fine_to_map = np.linalg.inv(map_to_head) @ vox_to_head
    pad = outside.pad
    dist = _trilinear(outside.distance, _shift(fine_to_map, pad), np.zeros(3, np.int64),
                      np.array(fine_shape), np.float32(np.inf))  # fmt: skip
    index = np.zeros(fine_shape, np.uint8)
    head, to_head = _closed_head(support, map_vox)
    hull = _trilinear(head, to_head @ fine_to_map, np.zeros(3, np.int64), np.array(fine_shape),
                      np.float32(0))  # fmt: skip
    index[(hull > 0.5) | (dist <= thickness)] = to_index[SOFT]
    del hull
    landmarks = _landmarks(outside, map_to_head, support)
    index = paint(fine_shape, vox_to_head, _soft_tissue(half, landmarks), index=index, codes=codes)
    index[dist <= CSF_MM + SKULL_MM] = to_index[SKULL]
    index = paint(fine_shape, vox_to_head, _cavities(landmarks), index=index, codes=codes)
    index[dist <= CSF_MM] = to_index[CSF]
    del dist

    # the brain: labels (nearest) and chi (trilinear, normalised by the support) from the map
    lo, hi = _fine_box(support, fine_to_map, fine_shape)
    to_map = fine_to_map[:3]
    brain_box = _nearest(brain_map, to_map, lo, hi - lo)
    chi_box = _trilinear(np.where(support, chi, 0), to_map, lo, hi - lo, np.float32(0))
    weight = _trilinear(support.astype(np.float32), to_map, lo, hi - lo, np.float32(0))
    chi_box /= np.maximum(weight, np.float32(1e-6))
    del weight
    inside = brain_box > 0
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    index[box][inside] = np.searchsorted(codes, brain_box[inside])
    if foci:
        before = index[box].copy()
        structures = _foci(chi, brain_map, map_to_head, seed=seed, subject=subject)
        index = paint(fine_shape, vox_to_head, [(c, s, map_codes) for c, s in structures],
                      index=index, codes=codes)  # fmt: skip
        inside &= index[box] == before
        del before

    derived = map_codes if labels is None else [BRAIN]  # R2* and PD from chi, not the table
    chi_table, r2_table, pd_table = _tissue_tables(codes, derived=derived)
    fine_chi, r2star, pd = chi_table[index], r2_table[index], pd_table[index]
    fine_chi[box][inside] = chi_box[inside]
    derived = np.isnan(r2star)
    r2star[derived] = 18.0 + 130.0 * np.abs(fine_chi[derived])
    r2star *= np.float32(b0 / 3.0)  # the table's values are at 3 T; dephasing grows with B0
    pd[np.isnan(pd)] = np.float32(0.8)
    del derived, chi_box, brain_box, inside
    rng = np.random.default_rng([seed, subject, session, 1])
    names = {c: TISSUES[c][0] if c in TISSUES else f"Label-{c}" for c in map_codes}
    return acquire_scan(
        index,
        codes,
        chi=fine_chi,
        r2star=r2star,
        pd=pd,
        brain_labels=[*map_codes, *((MICROBLEED, CALCIFICATION) if foci else ())],
        affine=acquired,
        oversample=k,
        echo_times=echo_times,
        b0=b0,
        snr=snr,
        rng=rng,
        phase_units=phase_units,
        offset=curved_offset,
        label_names=names,
    )


def brain_labels(chi, labels=None):
    """The brain's labels on the map's grid (int32, 0 outside).

    Without `labels`: `BRAIN` where chi is finite and non-zero (holes filled), `VEIN` where
    chi > `VEIN_PPM` ppm and exceeds its grey-level opening by a 5-voxel cube by 0.1 ppm (thin
    bright structures). Raises ValueError when no brain is left or `labels` has another shape.
    """
    if chi.ndim != 3 or min(chi.shape) < 2:
        raise ValueError(f"the chi map has shape {chi.shape}: a 3-D image is needed")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != chi.shape:
            raise ValueError(f"labels of shape {labels.shape} on a chi map of shape {chi.shape}")
        out = np.where(np.isin(labels, NON_BRAIN), 0, labels).astype(np.int32)
    else:
        support = ndi.binary_fill_holes(np.isfinite(chi) & (chi != 0))
        values = np.where(support, np.nan_to_num(chi), 0)
        tophat = values - ndi.grey_opening(values, size=(5, 5, 5))
        out = np.where(support, BRAIN, 0).astype(np.int32)
        out[support & (values > VEIN_PPM) & (tophat > 0.1)] = VEIN
    if not out.any():
        raise ValueError("the chi map holds no brain (finite, non-zero voxels of a 3-D image)")
    return out


def load_chi_map(path, *, labels=None, axcodes=None):
    """(chi ppm float32, affine, labels int32 or None) from NIfTI files; `axcodes` overrides
    the orientation of the map's header (`reorient`). Raises ValueError naming the file that
    cannot be read or used."""
    chi, affine = _load(path, np.float32)
    if chi.ndim != 3:
        raise ValueError(f"{path}: a 3-D susceptibility map is needed, not shape {chi.shape}")
    label_image = None
    if labels is not None:
        label_image, label_affine = _load(labels, None)
        if label_image.shape != chi.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise ValueError(f"{labels}: not on the grid of {path}")
        if not np.array_equal(label_image, np.round(label_image)):
            raise ValueError(f"{labels}: labels must be integers")
        label_image = label_image.astype(np.int32)
    if axcodes is not None:
        affine = reorient(affine, chi.shape, axcodes)
    try:
        brain_labels(chi, label_image)
    except ValueError as error:
        raise ValueError(f"{labels or path}: {error}") from None
    return chi, affine, label_image


def _load(path, dtype):
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise ValueError(f"{path}: cannot read it as NIfTI ({error})") from None
    return (data if dtype is None else data.astype(dtype)), image.affine


def reorient(affine, shape, axcodes):
    """The affine of a grid whose voxel axes point to `axcodes` (e.g. "RPS": i right, j
    posterior, k superior), same voxel sizes and centre: for maps whose header says otherwise
    (the 2016 challenge's COSMOS map: its header says RAS, its second axis runs posterior, as
    its cerebellum and straight sinus show; left and right cannot be told apart, so RPS)."""
    directions = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    codes = str(axcodes).upper()
    if len(codes) != 3 or any(c not in directions for c in codes):
        raise ValueError(f"axis codes {axcodes!r}: three of R/L, A/P, S/I")
    if sorted(directions[c][0] for c in codes) != [0, 1, 2]:
        raise ValueError(f"axis codes {axcodes!r} name an axis twice")
    affine = np.asarray(affine, float)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    out = np.eye(4)
    for i, c in enumerate(codes):
        axis, sign = directions[c]
        out[:3, i] = 0.0
        out[axis, i] = sign * sizes[i]
    middle = (np.asarray(shape) - 1) / 2
    out[:3, 3] = affine[:3, :3] @ middle + affine[:3, 3] - out[:3, :3] @ middle
    return out


class _Outside:
    """Distance (mm) from the brain on the map's grid padded by `pad` voxels per side."""

    def __init__(self, distance, pad):
        self.distance, self.pad = distance, pad

    def at(self, points_map_vox):
        """Distance at (3, N) map voxel coordinates (inf beyond the padded grid)."""
        return ndi.map_coordinates(self.distance, points_map_vox + self.pad[:, None], order=1,
                                   mode="constant", cval=np.inf)  # fmt: skip


def _outside_distance(support, voxel_size):
    """`_Outside` of a brain mask: on its bounding box, padded to reach past the scalp."""
    reach = CSF_MM + SKULL_MM + SCALP_MM + 2.0
    grow = np.ceil(reach / np.asarray(voxel_size)).astype(np.int64)
    lo, hi = _bounds(support)
    pad = grow - lo  # map voxel -> padded voxel
    padded = np.pad(support[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))],
                    [(g, g) for g in grow])  # fmt: skip
    distance = ndi.distance_transform_edt(~padded, sampling=voxel_size).astype(np.float32)
    return _Outside(distance, pad)


def _closed_head(support, voxel_size):
    """The head inside its scalp: the brain grown by the layers' thickness, its concavities
    narrower than 2 `CLOSE_MM` filled (a morphological closing by distance transforms), as a
    float32 indicator on a grid twice as coarse as the map's, and the 4x4 map voxel -> that
    grid's voxel."""
    lo, hi = _bounds(support)
    crop = support[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    half = -(-np.array(crop.shape) // 2)
    crop = np.pad(crop, [(0, 2 * m - n) for m, n in zip(half, crop.shape, strict=True)])
    coarse = crop.reshape(half[0], 2, half[1], 2, half[2], 2).any(axis=(1, 3, 5))
    step = 2 * np.asarray(voxel_size, float)
    thickness = CSF_MM + SKULL_MM + SCALP_MM
    grow = np.ceil((thickness + CLOSE_MM) / step).astype(int) + 2
    coarse = np.pad(coarse, [(g, g) for g in grow])
    distance = ndi.distance_transform_edt(~coarse, sampling=step)
    closed = ndi.distance_transform_edt(distance <= thickness + CLOSE_MM, sampling=step)
    head = ((closed > CLOSE_MM) | (distance <= thickness)).astype(np.float32)
    to_head = np.zeros((3, 4))
    to_head[:, :3] = np.eye(3) / 2
    to_head[:, 3] = (-lo - 0.5) / 2 + grow
    return head, np.vstack([to_head, [0, 0, 0, 1]])


def _bounds(mask):
    """[lo, hi) voxel bounds of a non-empty mask."""
    spans = [np.flatnonzero(mask.any(axis=a)) for a in [(1, 2), (0, 2), (0, 1)]]
    return np.array([c[0] for c in spans]), np.array([c[-1] + 1 for c in spans])


def _shift(matrix, pad):
    """Rows 0-2 of a voxel map into the padded grid."""
    out = np.array(matrix[:3], float)
    out[:, 3] += pad
    return out


def _landmarks(outside, map_to_head, support):
    """Where rays from the brain's centre (head mm) leave the brain: exit(direction) -> point."""
    head_to_map = np.linalg.inv(map_to_head)
    centre = map_to_head[:3, :3] @ np.argwhere(support).mean(axis=0) + map_to_head[:3, 3]
    steps = np.arange(0.0, 200.0, 0.5)

    def exit_point(direction):
        u = np.asarray(direction, float) / np.linalg.norm(direction)
        points = centre[:, None] + u[:, None] * steps
        distance = outside.at(head_to_map[:3, :3] @ points + head_to_map[:3, 3:])
        out = np.flatnonzero(distance > 0.5)
        return points[:, out[0] if out.size else -1], u

    return centre, exit_point


def _soft_tissue(half, landmarks):
    """Face and neck (soft tissue) below and in front of the brain, painted over air."""
    width, length, height = half
    centre, _ = landmarks
    cx, cy, cz = centre
    return [
        (SOFT, ellipsoid((cx, cy + 0.55 * length, cz - 0.6 * height),
                         (0.72 * width, 0.5 * length, 0.6 * height)), (0,)),
        (SOFT, neck((cx, cy - 0.2 * length), (0.7 * width, 0.55 * length), cz - 0.4 * height),
         (0,)),
    ]  # fmt: skip


def _cavities(landmarks):
    """Air in the bone and soft tissue: sinuses, nasal cavity, mastoids, pharynx (head mm)."""
    _, exit_point = landmarks
    bone = CSF_MM + 1.5  # the thin bone between a cavity and the brain (mm)

    def beside(direction, semi, gap=bone):
        """An ellipsoid whose near side is `gap` mm outside the brain along `direction`."""
        point, u = exit_point(direction)
        reach = float(np.linalg.norm(u / np.asarray(semi, float)) ** -1)
        return point + u * (gap + reach), semi

    frontal = beside((0, 1, -0.15), (13, 6, 9))
    sphenoid = beside((0, 0.3, -1), (10, 11, 9))
    nasal = beside((0, 1, -1.2), (9, 20, 14), gap=16)
    left_mastoid = beside((-1, -0.5, -0.8), (6, 10, 8))
    right_mastoid = beside((1, -0.5, -0.8), (6, 10, 8))
    cavities = [ellipsoid(c, s) for c, s in (frontal, sphenoid, nasal, left_mastoid,
                                             right_mastoid)]  # fmt: skip
    (nx, ny, nz), _ = nasal
    for side in (-1, 1):
        cavities.append(ellipsoid((nx + side * 24, ny - 2, nz - 4), (10, 13, 13)))  # maxillary
    (sx, sy, sz), _ = sphenoid
    cavities += [capsule((nx, ny - 22, nz - 6), (sx, sy - 12, sz - 220), 8.0)]  # pharynx
    return [(AIR, cavity, (SKULL, SOFT)) for cavity in cavities]


def _foci(chi, brain_map, map_to_head, *, seed, subject):
    """The planted microbleed (left) and calcification (right): [(label, ball)] in head mm,
    centred at seeded brain voxels at least `FOCUS_DEPTH_MM` deep, in ordinary tissue (|chi|
    < 0.1 ppm within 3 voxels), and 30 mm or more apart."""
    voxel = np.linalg.norm(map_to_head[:3, :3], axis=0)
    lo, hi = _bounds(brain_map > 0)
    crop = tuple(slice(a - 1, b + 1) for a, b in zip(np.maximum(lo, 1), hi, strict=True))
    brain, chi = brain_map[crop] > 0, np.abs(np.nan_to_num(chi[crop]))
    depth = ndi.distance_transform_edt(brain, sampling=voxel)
    calm = ndi.maximum_filter(chi, size=7) < 0.1
    candidates = np.argwhere((depth >= FOCUS_DEPTH_MM) & calm & brain) + np.maximum(lo, 1) - 1
    if candidates.size == 0:  # a small brain: its deepest voxels
        candidates = np.argwhere(depth >= depth.max() * 0.6) + np.maximum(lo, 1) - 1
    head = (map_to_head[:3, :3] @ candidates.T + map_to_head[:3, 3:]).T
    rng = np.random.default_rng([seed, subject, 2])
    left, right = head[head[:, 0] < 0], head[head[:, 0] >= 0]
    bleed = (left if len(left) else head)[rng.integers(len(left) or len(head))]
    far = right[np.linalg.norm(right - bleed, axis=1) >= 30.0] if len(right) else right
    pool = far if len(far) else head[np.argsort(-np.linalg.norm(head - bleed, axis=1))[:1]]
    calcification = pool[rng.integers(len(pool))]
    ball = (FOCUS_MM,) * 3
    return [(MICROBLEED, ellipsoid(bleed, ball)), (CALCIFICATION, ellipsoid(calcification, ball))]


def _tissue_tables(codes, *, derived):
    """chi (ppm), R2* (1/s) and PD per code from `TISSUES`; NaN R2*/PD (from chi) for the
    codes in `derived` and those `TISSUES` does not know."""
    rows = [TISSUES.get(int(c), (None, np.nan, np.nan, np.nan)) for c in codes]
    chi, r2star, pd = (np.array([r[i] for r in rows], np.float32) for i in (1, 2, 3))
    unknown = np.isin(codes, derived)
    r2star[unknown], pd[unknown] = np.nan, np.nan
    return np.nan_to_num(chi), r2star, pd


def _fine_box(support, fine_to_map, fine_shape):
    """Fine-grid box [lo, hi) that holds the brain of the map."""
    lo_map, hi_map = _bounds(support)
    lo_map, hi_map = lo_map - 1.0, hi_map.astype(float)
    corners = np.array(np.meshgrid(*zip(lo_map, hi_map, strict=True), indexing="ij"))
    to_fine = np.linalg.inv(fine_to_map)
    fine = to_fine[:3, :3] @ corners.reshape(3, -1) + to_fine[:3, 3:]
    lo = np.clip(np.floor(fine.min(1)), 0, fine_shape).astype(np.int64)
    hi = np.clip(np.ceil(fine.max(1)) + 1, 0, fine_shape).astype(np.int64)
    return lo, hi


@njit(parallel=True, cache=True)
def _trilinear(volume, matrix, lo, shape, fill):
    """`volume` sampled (trilinear, float32) at grid voxels lo..lo+shape-1 mapped into it by
    the 3x4 `matrix`; `fill` beyond its edge voxels."""
    out = np.empty((shape[0], shape[1], shape[2]), np.float32)
    nx, ny, nz = volume.shape
    for i in prange(shape[0]):
        for j in range(shape[1]):
            for m in range(shape[2]):
                a, b, c = i + lo[0], j + lo[1], m + lo[2]
                p = matrix[0, 0] * a + matrix[0, 1] * b + matrix[0, 2] * c + matrix[0, 3]
                q = matrix[1, 0] * a + matrix[1, 1] * b + matrix[1, 2] * c + matrix[1, 3]
                r = matrix[2, 0] * a + matrix[2, 1] * b + matrix[2, 2] * c + matrix[2, 3]
                if p < 0 or q < 0 or r < 0 or p > nx - 1 or q > ny - 1 or r > nz - 1:
                    out[i, j, m] = fill
                    continue
                p0, q0, r0 = min(int(p), nx - 2), min(int(q), ny - 2), min(int(r), nz - 2)
                fp, fq, fr = p - p0, q - q0, r - r0
                value = 0.0
                for dp in range(2):
                    wp = fp if dp else 1 - fp
                    for dq in range(2):
                        wq = fq if dq else 1 - fq
                        for dr in range(2):
                            wr = fr if dr else 1 - fr
                            value += wp * wq * wr * volume[p0 + dp, q0 + dq, r0 + dr]
                out[i, j, m] = value
    return out


@njit(parallel=True, cache=True)
def _nearest(volume, matrix, lo, shape):
    """`volume` sampled (nearest voxel) like `_trilinear`; 0 beyond its edge."""
    out = np.zeros((shape[0], shape[1], shape[2]), volume.dtype)
    nx, ny, nz = volume.shape
    for i in prange(shape[0]):
        for j in range(shape[1]):
            for m in range(shape[2]):
                a, b, c = i + lo[0], j + lo[1], m + lo[2]
                p = int(np.floor(matrix[0, 0] * a + matrix[0, 1] * b + matrix[0, 2] * c
                                 + matrix[0, 3] + 0.5))  # fmt: skip
                q = int(np.floor(matrix[1, 0] * a + matrix[1, 1] * b + matrix[1, 2] * c
                                 + matrix[1, 3] + 0.5))  # fmt: skip
                r = int(np.floor(matrix[2, 0] * a + matrix[2, 1] * b + matrix[2, 2] * c
                                 + matrix[2, 3] + 0.5))  # fmt: skip
                if 0 <= p < nx and 0 <= q < ny and 0 <= r < nz:
                    out[i, j, m] = volume[p, q, r]
    return out
