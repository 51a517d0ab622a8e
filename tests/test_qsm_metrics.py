"""Challenge metrics on cases whose answer is known by hand."""

import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.qsm.metrics import correlation, hfen, nrmse, ssim


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    shape = (32, 32, 32)
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    mask = x**2 + y**2 + z**2 < 13**2
    ref = np.where(mask, ndimage.gaussian_filter(rng.standard_normal(shape), 2.0), 0.0)
    ref[mask] -= ref[mask].mean()  # zero mean in the mask, so scaling is exact
    return ref, mask, (x, y, z)


def test_nrmse_hand_values(case):
    ref, mask, _ = case
    assert nrmse(ref, ref, mask) == pytest.approx(0.0, abs=1e-9)
    assert nrmse(ref + 5.0, ref, mask) == pytest.approx(0.0, abs=1e-9)  # offsets are removed
    assert nrmse(2 * ref, ref, mask) == pytest.approx(100.0)
    assert nrmse(np.zeros_like(ref), ref, mask) == pytest.approx(100.0)
    assert nrmse(-ref, ref, mask) == pytest.approx(200.0)
    # Outside the mask nothing counts.
    assert nrmse(np.where(mask, ref, 1e6), ref, mask) == pytest.approx(0.0, abs=1e-9)


def test_hfen_is_linear_and_sees_only_fine_structure(case):
    ref, mask, (x, y, z) = case
    assert hfen(ref, ref, mask) == pytest.approx(0.0, abs=1e-9)
    assert hfen(3 * ref, ref, mask) == pytest.approx(200.0)
    assert hfen(ref + 2.0, ref, mask) == pytest.approx(0.0, abs=1e-9)
    # HFEN is the RMSE of the filtered maps: a sinusoid of 1.5 voxels' period, which the LoG
    # of sigma 1.5 all but removes, costs RMSE and little HFEN (the mask edge adds some).
    fine = 0.5 * ref[mask].std() * np.sin(2 * np.pi * x / 1.5)
    assert nrmse(ref + fine, ref, mask) > 4 * hfen(ref + fine, ref, mask)


def test_ssim_and_correlation(case):
    ref, mask, _ = case
    assert ssim(ref, ref, mask) == pytest.approx(1.0)
    assert ssim(ref + 1.0, ref, mask) == pytest.approx(1.0)
    noise = np.random.default_rng(1).standard_normal(ref.shape) * ref[mask].std()
    scores = [ssim(ref + level * noise, ref, mask) for level in (0.1, 0.5, 2.0)]
    assert 1 > scores[0] > scores[1] > scores[2]
    assert correlation(2 * ref + 1, ref, mask) == pytest.approx(1.0)
    assert correlation(-ref, ref, mask) == pytest.approx(-1.0)
