"""Dipole inversions against analytic fields: spheres and cylinders of known susceptibility."""

import inspect

import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.invert import INVERSIONS, tikhonov, tkd, tv

GEOMETRIES = [
    ((1.0, 1.0, 1.0), (0.0, 0.0, 1.0)),
    ((1.0, 1.0, 1.0), (0.3, 0.2, 0.93)),  # oblique B0
    ((1.0, 1.0, 2.0), (0.0, 0.0, 1.0)),  # anisotropic voxels
]


def _coords(shape, voxel_size):
    axes = [(np.arange(n) - n / 2 + 0.5) * h for n, h in zip(shape, voxel_size, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _sphere_case(voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), shape=(64, 64, 64)):
    """chi 0.2 ppm in a sphere of 8 mm, its field, a mask of radius 26 mm around it."""
    x, y, z = _coords(shape, voxel_size)
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = np.where(r < 8.0, 0.2, 0.0).astype(np.float32)
    field = forward_field(chi, voxel_size, b0_dir)
    return field, r < 26.0, r


def _contrast(chi, r):
    """Mean inside the sphere (away from its edge) minus the mean of the surrounding shell."""
    return chi[r < 6.0].mean() - chi[(r > 12.0) & (r < 20.0)].mean()


def test_dispatch_table_signatures():
    for name, invert in INVERSIONS.items():
        params = inspect.signature(invert).parameters
        assert list(params)[:2] == ["local_field_ppm", "mask"], name
        for key in ("voxel_size", "b0_dir"):
            assert params[key].kind is inspect.Parameter.KEYWORD_ONLY, name
        for p in list(params.values())[2:]:
            # data the interface fills in
            if p.name not in ("voxel_size", "brain", "report", "noise_ppm", "lbv_mask"):
                if (name, p.name) in (
                    ("tgv", "alpha1"),
                    ("tgv", "alpha0"),
                    ("tfi", "regularization"),
                ):
                    assert p.default is None, "None: the strength follows the field's noise"
                    continue
                assert isinstance(p.default, (int, float, str, tuple)), (name, p.name)


def test_tgv_extends_chi_over_the_eroded_layer_of_the_brain():
    """The regulariser alone fills the layer between the valid mask and the brain, one voxel
    deep by default, with values close to the tissue's (not zero, not wild)."""
    shape, voxel_size = (48, 48, 48), (1.0, 1.0, 1.0)
    r = np.linalg.norm(np.indices(shape) - 23.5, axis=0)
    brain = r < 18
    valid = r < 15
    chi_true = np.where(r < 6, 0.2, 0.0).astype(np.float32)
    field = forward_field(chi_true, voxel_size, (0.0, 0.0, 1.0))
    chi = INVERSIONS["tgv"](field, valid, voxel_size=voxel_size, brain=brain, iterations=300)
    layer = ndimage.binary_dilation(valid) & ~valid
    assert np.all(chi[layer] != 0) and np.all(chi[~(valid | layer)] == 0)
    assert np.abs(chi[layer] - chi[valid].mean()).max() < 0.05
    alone = INVERSIONS["tgv"](field, valid, voxel_size=voxel_size, iterations=300)
    assert np.all(alone[~valid] == 0)


def test_tgv_reports_the_iterations_it_made():
    """`report` gets the iterations actually run: all of them without a convergence test, scaled
    up for a finer grid, and fewer than the most when the test stops early."""
    field, mask, _ = _sphere_case(shape=(32, 32, 32))
    runs = {}
    for name, voxel_size, tol in (("all", 1.0, 0.0), ("fine", 0.5, 0.0), ("early", 1.0, 1e-2)):
        runs[name] = {}
        INVERSIONS["tgv"](field, mask, voxel_size=(voxel_size,) * 3, iterations=40, tol=tol,
                          report=runs[name])  # fmt:skip
    assert runs["all"]["iterations_run"] == 40
    assert runs["fine"]["iterations_run"] == 113  # 40 / sqrt(0.125)
    assert 0 < runs["early"]["iterations_run"] < 40


def test_tgv_strength_follows_the_field_noise():
    """With no alphas given, alpha1 is `TGV_ALPHA_PER_NOISE` times the phase noise at te
    (noise_ppm * 2 pi gamma_bar b0 te), alpha0 three times that; without a noise level the
    fixed fallback. A noisy field regularised for its own noise keeps less of it in the map than
    regularised as if it were quiet."""
    from bids_qsm.qsm import tgv as T
    from bids_qsm.qsm.invert import TGV_ALPHA1_WITHOUT_NOISE, TGV_ALPHA_PER_NOISE, tgv

    field, mask, r = _sphere_case(shape=(40, 40, 40))
    used = {}
    for name, noise in (("quiet", 1e-3), ("noisy", 4e-3), ("unknown", None)):
        used[name] = {}
        tgv(field, mask, voxel_size=(1.0, 1.0, 1.0), noise_ppm=noise, te=0.03, b0_tesla=3.0,
            iterations=10, report=used[name])  # fmt:skip
    expected = TGV_ALPHA_PER_NOISE * 1e-3 * T.rad_per_ppm(0.03, 3.0)
    assert np.isclose(used["quiet"]["alpha1"], expected, rtol=1e-6)
    assert np.isclose(used["noisy"]["alpha1"], 4 * expected, rtol=1e-6)
    assert np.isclose(used["quiet"]["alpha0"], 3 * used["quiet"]["alpha1"])
    assert used["unknown"]["alpha1"] == TGV_ALPHA1_WITHOUT_NOISE

    rng = np.random.default_rng(0)
    sigma = 8e-3
    noisy = field + rng.normal(0, sigma, field.shape).astype(np.float32)
    residual = {}
    for name, level in (("tied", sigma), ("as if quiet", sigma / 4)):
        common = dict(voxel_size=(1.0, 1.0, 1.0), noise_ppm=level, te=0.03, b0_tesla=3.0,
                      iterations=200)  # fmt:skip
        chi = tgv(noisy, mask, **common) - tgv(field, mask, **common)
        residual[name] = np.std(chi[r < 10])
    assert residual["tied"] < 0.7 * residual["as if quiet"]


def test_defaults_of_the_pipeline_are_lbv_and_tfi():
    """Chosen by measurement on the realistic fixtures (docs/validation.md)."""
    from bids_qsm.config import Workflow

    assert (Workflow().background, Workflow().inversion) == ("lbv", "tfi")


@pytest.mark.parametrize("method", ["tkd", "tikhonov", "tv"])
def test_output_float32_zero_outside_mask(method):
    field, mask, _ = _sphere_case(shape=(48, 48, 48))
    chi = INVERSIONS[method](field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0, 0, 1))
    assert chi.dtype == np.float32 and chi.shape == mask.shape
    assert np.all(chi[~mask] == 0) and np.isfinite(chi).all()


@pytest.mark.parametrize(("voxel_size", "b0_dir"), GEOMETRIES)
def test_tkd_sphere(voxel_size, b0_dir):
    b0 = _unit(b0_dir)
    field, mask, r = _sphere_case(voxel_size, b0)
    chi = tkd(field, mask, voxel_size=voxel_size, b0_dir=b0)
    # TKD underestimates by a known amount (the truncated cone); about 0.83 at threshold 0.19.
    assert 0.75 * 0.2 < _contrast(chi, r) < 1.0 * 0.2


@pytest.mark.parametrize(("voxel_size", "b0_dir"), GEOMETRIES)
def test_tikhonov_gradient_sphere(voxel_size, b0_dir):
    b0 = _unit(b0_dir)
    field, mask, r = _sphere_case(voxel_size, b0)
    chi = tikhonov(field, mask, voxel_size=voxel_size, b0_dir=b0)
    assert 0.8 * 0.2 < _contrast(chi, r) < 1.0 * 0.2


def test_tkd_small_threshold_is_nearly_exact():
    # With a tiny threshold TKD is almost the exact inverse of the forward model.
    field, mask, r = _sphere_case()
    chi = tkd(field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0, 0, 1), threshold=0.02)
    assert abs(_contrast(chi, r) - 0.2) < 0.01


def test_tikhonov_identity_is_tkd_like_shrinkage():
    # D / (D^2 + lambda) at lambda = 0.19^2 shrinks like TKD: contrast between 0.5 and 0.8.
    field, mask, r = _sphere_case()
    chi = tikhonov(
        field, mask, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0, 0, 1), penalty="identity",
        regularization=0.03,
    )  # fmt: skip
    assert 0.5 * 0.2 < _contrast(chi, r) < 0.8 * 0.2
    with pytest.raises(ValueError, match="penalty"):
        tikhonov(field, mask, voxel_size=(1, 1, 1), b0_dir=(0, 0, 1), penalty="laplacian")


@pytest.mark.parametrize(("voxel_size", "b0_dir"), GEOMETRIES)
def test_tv_sphere(voxel_size, b0_dir):
    b0 = _unit(b0_dir)
    field, mask, r = _sphere_case(voxel_size, b0)
    chi = tv(field, mask, voxel_size=voxel_size, b0_dir=b0)
    # L1 of the gradient keeps the sphere's plateau; noise-free data, small bias.
    assert abs(_contrast(chi, r) - 0.2) < 0.1 * 0.2
