"""SWI and minIP against fields made by the dipole model from known susceptibility sources.

The volume: a brain-like ellipsoid with a vein (cylinder, chi +0.4 ppm, R2* 60 1/s), a
calcification (sphere, -1.0 ppm, 150 1/s) and a microbleed (sphere, +1.0 ppm, 200 1/s) in
tissue of R2* 20 1/s, at 3 T, with a smooth background field and noise. The field comes from
`forward_field` (the dipole model, not the code under test), the magnitude from exp(-R2* TE).
"""

import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.swi import (
    combine_magnitude,
    highpass_field,
    minimum_intensity_projection,
    phase_weights,
    swi,
)
from bids_qsm.qsm.units import hz_per_ppm

N = 64
VOXEL = (1.0, 1.0, 1.0)
TE = np.array([5.0, 10.0, 15.0, 20.0, 25.0]) * 1e-3
VEIN_AXES = {"perpendicular": (1.0, 0.0, 0.0), "parallel": (0.0, 0.0, 1.0), "oblique": (1, 0, 1)}


def _coordinates():
    return np.meshgrid(*[np.arange(N) - N / 2 + 0.5] * 3, indexing="ij")


def _scene(vein_axis, *, uniform_magnitude=False, seed=0):
    """(magnitude 4-D, field Hz, brain mask, {region: bool mask}) for a vein along `vein_axis`."""
    x, y, z = _coordinates()
    brain = x**2 + y**2 + (z / 0.9) ** 2 < 29**2
    axis = np.asarray(vein_axis, float) / np.linalg.norm(vein_axis)
    offset = np.stack([x, y - 8, z])
    along = np.tensordot(axis, offset, 1)
    regions = {
        "vein": ((offset**2).sum(0) - along**2 < 1.5**2) & brain,
        "calcification": (x + 12) ** 2 + (y + 10) ** 2 + (z + 4) ** 2 < 3.0**2,
        "microbleed": (x - 12) ** 2 + (y + 10) ** 2 + (z - 4) ** 2 < 2.5**2,
    }
    chi = np.zeros(brain.shape, np.float32)
    r2star = np.full(brain.shape, 20.0)
    for name, value, rate in (
        ("vein", 0.4, 60),
        ("calcification", -1.0, 150),
        ("microbleed", 1, 200),
    ):
        chi[regions[name]] = value
        if not uniform_magnitude:
            r2star[regions[name]] = rate
    rng = np.random.default_rng(seed)
    field = forward_field(chi, VOXEL) * hz_per_ppm(3.0)
    field += 30.0 * x / N + 20.0 * (z / N) ** 2 + rng.normal(0.0, 0.5, field.shape)
    magnitude = np.exp(-np.multiply.outer(r2star, TE)) + rng.normal(0.0, 0.01, (*brain.shape, 5))
    regions["tissue"] = brain & ~ndimage.binary_dilation(chi != 0, iterations=6)
    return np.abs(magnitude).astype(np.float32), field.astype(np.float32), brain, regions


def _rim(region, brain):
    """The two voxel layers around a region: where its dipole field blooms."""
    return ndimage.binary_dilation(region, iterations=2) & ~region & brain


@pytest.mark.parametrize("vein_axis", VEIN_AXES.values(), ids=VEIN_AXES.keys())
def test_phase_mask_darkens_a_vein_at_any_angle_to_b0(vein_axis):
    """With a flat magnitude the contrast is the phase mask's alone; the field inside the vein
    is +chi/3 along B0, -chi/6 across it, so only a mask of both signs darkens every vein."""
    magnitude, field, brain, regions = _scene(vein_axis, uniform_magnitude=True)
    image = swi(magnitude, field, brain, te=TE, voxel_size=VOXEL)
    tissue = image[regions["tissue"]].mean()
    assert image[regions["vein"]].mean() < 0.6 * tissue


def test_paramagnetic_mask_misses_a_vein_across_b0_but_darkens_one_along_it():
    """The sign convention: positive field (paramagnetic along B0) is darkened, negative not."""
    ratios = {}
    for name in ("perpendicular", "parallel"):
        magnitude, field, brain, regions = _scene(VEIN_AXES[name], uniform_magnitude=True)
        image = swi(magnitude, field, brain, te=TE, voxel_size=VOXEL, phase_mask="paramagnetic")
        ratios[name] = image[regions["vein"]].mean() / image[regions["tissue"]].mean()
    assert ratios["parallel"] < 0.2
    assert ratios["perpendicular"] > 0.9


@pytest.mark.parametrize("source", ["calcification", "microbleed"])
def test_calcification_and_microbleed_are_both_dark(source):
    magnitude, field, brain, regions = _scene(VEIN_AXES["oblique"])
    image = swi(magnitude, field, brain, te=TE, voxel_size=VOXEL)
    tissue = image[regions["tissue"]].mean()
    assert image[regions[source]].mean() < 0.3 * tissue  # the core: short T2*
    assert image[_rim(regions[source], brain)].mean() < 0.5 * tissue  # blooming: the phase mask
    assert image[regions["vein"]].mean() < 0.5 * tissue


@pytest.mark.parametrize("source", ["calcification", "microbleed"])
def test_blooming_of_both_signs_comes_from_the_phase(source):
    """Flat magnitude: the rim of the diamagnetic and the paramagnetic sphere darken alike."""
    magnitude, field, brain, regions = _scene(VEIN_AXES["oblique"], uniform_magnitude=True)
    image = swi(magnitude, field, brain, te=TE, voxel_size=VOXEL)
    assert image[_rim(regions[source], brain)].mean() < 0.3 * image[regions["tissue"]].mean()


def test_phase_weights_follow_the_documented_formula():
    te = 0.02
    quarter_turn = 1.0 / (4.0 * te)  # Hz that make a phase of pi/2 at te
    field = np.array([-quarter_turn, 0.0, quarter_turn, 10 * quarter_turn], np.float32)
    np.testing.assert_allclose(phase_weights(field, te=te), [0.0625, 1, 0.0625, 0], atol=1e-6)
    np.testing.assert_allclose(
        phase_weights(field, te=te, mode="paramagnetic", power=1), [1, 1, 0.5, 0], atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown phase mask"):
        phase_weights(field, te=te, mode="negative")


def test_highpass_removes_a_smooth_background_inside_the_mask():
    x, y, z = _coordinates()
    brain = x**2 + y**2 + z**2 < 28**2
    background = (40.0 * x / N + 25.0 * y / N - 10.0 * z / N).astype(np.float32)
    filtered = highpass_field(background, brain, voxel_size=VOXEL, sigma_mm=4.0)
    interior = ndimage.binary_erosion(brain, iterations=12)
    assert np.abs(filtered[interior]).max() < 0.01 * np.ptp(background[brain])
    assert np.all(filtered[~brain] == 0)
    np.testing.assert_array_equal(
        highpass_field(background, brain, voxel_size=VOXEL, sigma_mm=0), background * brain
    )


def test_magnitude_combinations():
    rng = np.random.default_rng(1)
    magnitude = rng.uniform(0.1, 1.0, (4, 5, 6, 3)).astype(np.float32)
    te = np.array([0.01, 0.02, 0.03])
    np.testing.assert_allclose(
        combine_magnitude(magnitude, te=te), np.sqrt((magnitude**2).sum(-1)), rtol=1e-6
    )
    np.testing.assert_allclose(
        combine_magnitude(magnitude, te=te, method="te-weighted"),
        (magnitude[..., 0] + 2 * magnitude[..., 1] + 3 * magnitude[..., 2]) / 6,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        combine_magnitude(magnitude[..., 0], te=te[:1]), magnitude[..., 0]
    )


def test_swi_is_float32_and_zero_outside_the_mask():
    magnitude, field, brain, _ = _scene(VEIN_AXES["oblique"])
    image = swi(
        magnitude, field, brain, te=TE, voxel_size=VOXEL, magnitude_combination="te-weighted"
    )
    assert image.dtype == np.float32 and image.shape == brain.shape
    assert np.all(image[~brain] == 0) and np.all(image[brain] >= 0)


def _brute_force_minip(image, half, axis, mask=None):
    moved = np.moveaxis(image, axis, -1)
    inside = np.ones(moved.shape, bool) if mask is None else np.moveaxis(mask, axis, -1)
    out = np.zeros_like(moved)
    for k in range(moved.shape[-1]):
        lo, hi = max(0, k - half), min(moved.shape[-1], k + half + 1)
        slab = np.where(inside[..., lo:hi], moved[..., lo:hi], np.inf)
        out[..., k] = np.where(inside[..., k], slab.min(axis=-1), 0)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize(("axis", "voxel", "slab_mm", "half"), [(2, 1.0, 16, 8), (0, 2.0, 16, 4)])
def test_minip_is_the_minimum_over_the_centred_slab(axis, voxel, slab_mm, half):
    magnitude, field, brain, _ = _scene(VEIN_AXES["oblique"])
    voxel_size = [1.0, 1.0, 1.0]
    voxel_size[axis] = voxel
    image = swi(magnitude, field, brain, te=TE, voxel_size=voxel_size)
    minip = minimum_intensity_projection(
        image, voxel_size=voxel_size, slab_mm=slab_mm, axis=axis, mask=brain
    )
    np.testing.assert_array_equal(minip, _brute_force_minip(image, half, axis, brain))
    assert np.all(minip <= image)
    # Without a mask the zeros outside the brain take part, and the projection still bounds it.
    plain = minimum_intensity_projection(image, voxel_size=voxel_size, slab_mm=slab_mm, axis=axis)
    np.testing.assert_array_equal(plain, _brute_force_minip(image, half, axis))
    assert np.all(plain <= image)
