"""Masks against a synthetic head with a known brain: ellipsoid brain with a dark vein and dark
deep grey matter, a skull gap, a bright scalp shell and Rician background noise."""

import numpy as np
import pytest

from bids_qsm.qsm.mask import MASKS, otsu, reliable_field

SHAPE = (80, 80, 64)
TE = np.array([4.0, 10.0, 16.0, 22.0]) * 1e-3


def _head(voxel_size=(1.0, 1.0, 1.0), snr=20.0, seed=0, scalp_radii=(1.2, 1.35), bridge=False):
    """(brain bool, magnitude (X, Y, Z, 4), wrapped phase (X, Y, Z, 4)) on a grid of 80 mm.

    scalp_radii: inner and outer radius of the scalp shell (brain radius 1); bridge: a strand
    of tissue, one voxel thick, across the skull gap, as partial volume makes at a thin skull.
    """
    shape = tuple(int(round(80 / h)) for h in voxel_size[:2]) + (int(round(64 / voxel_size[2])),)
    x, y, z = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * h for n, h in zip(shape, voxel_size, strict=True)],
        indexing="ij",
    )
    radius = np.sqrt((x / 28) ** 2 + (y / 24) ** 2 + (z / 20) ** 2)
    brain = radius <= 1
    scalp = (radius >= scalp_radii[0]) & (radius <= scalp_radii[1])
    if bridge:
        scalp |= (np.abs(y) < voxel_size[1] / 2) & (np.abs(z) < voxel_size[2] / 2) & (x > 0)
    # Deep grey matter with a short T2* and a vein (dark from the first echo), inside the brain.
    deep_gm = ((x - 8) / 6) ** 2 + (y / 5) ** 2 + (z / 5) ** 2 <= 1
    vein = ((x + 6) ** 2 + (z - 4) ** 2 <= 2.0) & (np.abs(y) < 15)
    # Receive-coil shading: 0.5 at the front to 1.5 at the back, brighter near the surface.
    coil = (1.0 + 0.5 * y / 40) * (1.0 + 0.3 * radius**2)
    density = coil * (np.where(brain, 1.0 + 0.15 * np.sin(x / 7), 0.0) + np.where(scalp, 1.4, 0))
    density = np.where(vein, 0.15, density)
    r2star = np.where(deep_gm, 60.0, np.where(scalp, 40.0, 20.0))
    mag = density[..., None] * np.exp(-r2star[..., None] * TE)
    field = 8.0 + 0.4 * x - 0.3 * z + np.where(vein, 25.0, 0.0)
    phase = 2 * np.pi * field[..., None] * TE + 0.5
    rng = np.random.default_rng(seed)
    noisy = (
        mag * np.exp(1j * phase)
        + (rng.standard_normal(mag.shape) + 1j * rng.standard_normal(mag.shape)) / snr
    )
    return brain, np.abs(noisy).astype(np.float32), np.angle(noisy).astype(np.float32)


def _scores(mask, brain):
    return (mask & brain).sum() / brain.sum(), (mask & ~brain).sum() / brain.sum()


def test_dispatch_keys():
    assert list(MASKS)[0] == "otsu" and {"threshold", "phase-quality"} <= set(MASKS)


@pytest.mark.parametrize("method", list(MASKS))
@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_mask_covers_the_brain(method, voxel_size):
    brain, mag, phase = _head(voxel_size)
    mask = MASKS[method](mag, voxel_size=voxel_size, phase=phase, te=TE)
    assert mask.dtype == bool and mask.shape == brain.shape
    covered, outside = _scores(mask, brain)
    assert covered >= 0.95 and outside < 0.02, (covered, outside)


def test_a_thick_scalp_bridged_to_the_brain_is_left_out():
    """The scalp is larger than the brain and joined to it by a strand of tissue: the brain is
    still the component kept, and the skull between them is not filled in."""
    brain, mag, phase = _head(scalp_radii=(1.15, 1.5), bridge=True)
    for method in MASKS:
        mask = MASKS[method](mag, voxel_size=(1, 1, 1), phase=phase, te=TE)
        covered, outside = _scores(mask, brain)
        assert covered >= 0.95 and outside < 0.02, (method, covered, outside)


def test_dark_vein_and_deep_grey_matter_are_kept():
    brain, mag, phase = _head()
    for method in MASKS:
        mask = MASKS[method](mag, voxel_size=(1, 1, 1), phase=phase, te=TE)
        dark = brain & (mag[..., -1] < 0.4)  # vein and deep GM at the last echo
        assert dark.sum() > 200
        assert mask[dark].mean() > 0.98, method


def test_erosion_is_in_millimetres():
    voxel_size = (1.0, 1.0, 2.0)
    brain, mag, phase = _head(voxel_size)
    mask = otsu(mag, voxel_size=voxel_size, erode_mm=4.0)
    # An ellipsoid eroded by d keeps about the volume of the ellipsoid with semi-axes a - d.
    expected = 4 / 3 * np.pi * (28 - 4) * (24 - 4) * (20 - 4) / np.prod(voxel_size)
    assert abs(mask.sum() / expected - 1) < 0.08
    assert not (mask & ~brain).any()


def test_phase_quality_drops_a_bright_void_with_noisy_phase():
    brain, mag, phase = _head()
    # A sinus-like region below the brain, touching it: bright in magnitude (so Otsu keeps it)
    # but its phase is noise (through-slice dephasing), which a field map cannot use.
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in brain.shape], indexing="ij")
    void = (x**2 + (y - 4) ** 2 + (z + 26) ** 2 <= 64) & ~brain
    rng = np.random.default_rng(3)
    mag[void] = 0.9
    phase[void] = rng.uniform(-np.pi, np.pi, size=(void.sum(), TE.size))
    plain = otsu(mag, voxel_size=(1, 1, 1))
    assert (plain & void).sum() > 0.5 * void.sum()  # the void fools the magnitude
    refined = MASKS["phase-quality"](mag, voxel_size=(1, 1, 1), phase=phase, te=TE)
    assert (refined & void).sum() < 0.1 * void.sum()
    covered, outside = _scores(refined, brain)
    assert covered >= 0.95 and outside < 0.02


def test_empty_image_gives_empty_mask():
    for method in MASKS:
        assert not MASKS[method](np.zeros((8, 8, 8, 2)), voxel_size=(1, 1, 1)).any()


def test_invivo_crop_keeps_the_vein(shared_data):
    nib = pytest.importorskip("nibabel")
    from scipy import ndimage

    from bids_qsm.qsm.phase import scale_phase

    folder = shared_data / "invivo_crop_3echo"
    mag = np.asarray(nib.load(folder / "Mag.nii").dataobj, dtype=np.float32)
    phase = scale_phase(np.asarray(nib.load(folder / "Phase.nii").dataobj), units="arbitrary")
    # The crop lies inside the brain (no background): the vein is the darkest 2 % of the last
    # echo relative to its neighbourhood.
    local = mag[..., 2] / ndimage.uniform_filter(mag[..., 2], 9)
    vein = local < np.percentile(local, 2)
    for method in MASKS:
        mask = MASKS[method](mag, voxel_size=(0.47, 0.47, 1.0), phase=phase, te=(4e-3, 8e-3, 12e-3))
        assert mask[vein].mean() > 0.98, method
        assert mask.mean() > 0.95, method


def test_reliable_field_drops_the_untrustworthy_edge_and_keeps_the_inside():
    """A ball whose outer shell partly reaches into noise (high noise, random field) and holds a
    few wrapped voxels (field off by 1/dTE, normal noise); inside it a vein-like line of noisy
    voxels and a strong but smooth field gradient. Only the bad edge voxels go."""
    rng = np.random.default_rng(1)
    shape = (40, 40, 40)
    x, y, z = np.meshgrid(*[np.arange(n) - 19.5 for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    mask = r < 15
    field = (3.0 * x + 0.05 * y * z).astype(np.float32)  # Hz: 3 Hz per voxel, smooth
    noise = np.full(shape, 0.1, np.float32)
    shell = mask & (r >= 14)
    garbage = shell & (x > 8)
    field[garbage] = rng.uniform(-200, 200, garbage.sum())
    noise[garbage] = 5.0
    wrapped = shell & (x < -8) & (np.abs(y) < 1) & (np.abs(z) < 1)
    spacing = 0.005
    field[wrapped] += 1 / spacing
    vein = (np.abs(y) < 1) & (np.abs(z - 3) < 1) & (np.abs(x) < 8)
    noise[vein] = 2.0
    common = dict(noise_factor=10, deviation_factor=0)
    kept = reliable_field(mask, field, noise, echo_spacing_s=spacing, **common)
    assert not (kept & garbage).any() and not (kept & wrapped).any()
    assert kept[vein].all() and not (kept & ~mask).any()
    assert (mask & ~kept & ~garbage & ~wrapped).sum() < 0.01 * mask.sum()

    # Without the echo spacing the wrapped voxels cannot be told from field, and stay.
    kept = reliable_field(mask, field, noise, echo_spacing_s=None, **common)
    assert kept[wrapped].all() and not (kept & garbage).any()

    # A voxel of the outer layer bent by 20 Hz (partial volume), far less than a wrap: only the
    # limit in units of the noise (40 x 0.1 Hz) catches it.
    bent = shell & (x > -1) & (x < 1) & (y < -8) & (np.abs(z) < 1)
    field[bent] += 20.0
    assert kept[bent].all()
    kept = reliable_field(mask, field, noise, echo_spacing_s=spacing, noise_factor=10)
    assert not (kept & bent).any() and kept[vein].all()
