"""Paramagnetic rims of given lesions: a planted rim lesion, a rimless one and a tiny one."""

import numpy as np
import pytest
from readout_scenes import VOXEL, make_scene
from scipy import ndimage as ndi

from bids_qsm.qsm.lesions import foci_in_lesions, lesion_rims, sector_directions


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def test_sector_directions_cover_the_sphere_evenly():
    d = sector_directions(16)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-12)
    assert np.linalg.norm(d.mean(axis=0)) < 0.1


def test_the_rim_lesion_is_flagged_the_rimless_not_and_the_tiny_one_not_judged(scene):
    rows = lesion_rims(scene.chi, scene.mask, scene.lesions, voxel_size=VOXEL,
                       names={1: "a", 2: "b"})  # fmt: skip
    rim, rimless, tiny = rows
    assert [r["index"] for r in rows] == [1, 2, 3] and rim["name"] == "a"
    assert tiny["name"] == "lesion-3"
    assert rim["judged"] and rim["rim"] is True and rim["rim_fraction"] >= 2 / 3
    assert rim["rim_ppm"] > rim["core_ppm"] and rim["rim_ppm"] > rim["nawm_ppm"]
    assert rimless["judged"] and rimless["rim"] is False and rimless["rim_fraction"] < 1 / 3
    assert not tiny["judged"] and tiny["rim"] is None and tiny["rim_fraction"] is None
    assert rim["volume_mm3"] == pytest.approx((scene.lesions == 1).sum() * 8.0)


def test_a_rim_just_outside_the_drawn_lesion_still_counts(scene):
    drawn = scene.lesions.copy()
    drawn[(drawn == 1) & ~ndi.binary_erosion(drawn == 1)] = 0  # the mask misses the rim shell
    rows = lesion_rims(scene.chi, scene.mask, drawn, voxel_size=VOXEL)
    assert rows[0]["rim"] is True and rows[1]["rim"] is False


def test_a_lesion_without_a_rim_at_weak_contrast_is_not_flagged():
    weak = make_scene(rim_chi=0.03)  # the "rim" no different from the core
    rows = lesion_rims(weak.chi, weak.mask, weak.lesions, voxel_size=VOXEL)
    assert rows[0]["rim"] is False


def test_foci_inside_a_lesion_are_listed_with_its_index(scene):
    foci = [{"id": 1, "peak_vox": np.argwhere(scene.lesions == 2)[0]},
            {"id": 2, "peak_vox": (0, 0, 0)}]  # fmt: skip
    assert foci_in_lesions(foci, scene.lesions) == {1: 2}


def test_a_lesion_without_a_core_is_reported_not_judged(scene):
    lesions = np.zeros(scene.lesions.shape, np.int16)
    i, j, k = np.indices(lesions.shape)
    lesions[(i - 32) ** 2 + (j - 20) ** 2 + (k - 24) ** 2 <= 1] = 4  # 5 mm: all edge, no core
    (row,) = lesion_rims(scene.chi, scene.mask, lesions, voxel_size=VOXEL)
    assert row["diameter_mm"] > 3 and row["core_ppm"] is None
    assert not row["judged"] and row["rim"] is None and row["rim_ppm"] is not None
