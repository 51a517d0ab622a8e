"""Vein mask, venous susceptibility and oxygen saturation against planted veins."""

import numpy as np
import pytest
from readout_scenes import VOXEL, WM, make_scene

from bids_qsm.qsm.foci import find_foci
from bids_qsm.qsm.veins import measure_veins, oxygen_saturation, vein_mask, vesselness


def test_saturation_formula_against_hand_values():
    # Y = 1 - dchi / (Hct 3.43) + (-0.10) / 3.43
    assert oxygen_saturation(0.0) == pytest.approx(1 - 0.10 / 3.43)
    dchi = 0.40 * (3.43 * (1 - 0.6) - 0.10)  # the dchi that makes Y = 0.6 at Hct 0.40
    assert oxygen_saturation(dchi) == pytest.approx(0.6)
    assert oxygen_saturation(0.3, hct=0.45) == pytest.approx(1 - 0.3 / (0.45 * 3.43) - 0.1 / 3.43)


def test_vesselness_is_high_on_a_tube_and_low_on_a_ball():
    shape = (40, 40, 40)
    i, j, k = np.indices(shape)
    chi = np.zeros(shape, np.float32)
    chi[((j - 12) ** 2 + (k - 20) ** 2 <= 2) & (i > 4) & (i < 36)] = 0.4  # a tube along x
    chi[(i - 20) ** 2 + (j - 30) ** 2 + (k - 20) ** 2 <= 4] = 0.4  # a ball
    v, scale = vesselness(chi, np.ones(shape, bool), voxel_size=(1.0, 1.0, 1.0))
    assert v[20, 12, 20] > 5 * v[20, 30, 20]
    assert 1.0 <= scale[20, 12, 20] <= 2.0


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def test_veins_are_found_and_their_saturation_follows_the_planted_susceptibility(scene):
    foci, _ = find_foci(scene.chi, scene.mask, voxel_size=VOXEL, magnitude=scene.magnitude)
    veins = vein_mask(scene.chi, scene.mask, voxel_size=VOXEL, exclude=foci > 0)
    assert (veins & scene.veins).sum() >= 0.8 * scene.veins.sum()
    assert not (veins & (scene.nuclei | (foci > 0))).any()
    result = measure_veins(scene.chi, veins, scene.mask, voxel_size=VOXEL)
    assert result["reference"].startswith("tissue")
    assert result["reference_ppm"] == pytest.approx(WM, abs=0.02)
    assert result["dchi_ppm"] == pytest.approx(scene.vein_chi, rel=0.2)
    assert result["Y"] == pytest.approx(oxygen_saturation(scene.vein_chi), abs=0.05)
    # only the wide vein (6 mm across) counts: the thin one (2.4 mm) is partial volume
    assert 0 < result["measured_volume_mm3"] <= scene.veins.sum() * np.prod(VOXEL)
    assert result["measured_on"] == "wide veins"


def test_a_given_reference_region_is_used_and_named(scene):
    veins = vein_mask(scene.chi, scene.mask, voxel_size=VOXEL)
    region = np.zeros(scene.mask.shape, bool)
    region[28:36, 28:36, 20:28] = True  # plain white matter
    result = measure_veins(scene.chi, veins, scene.mask, voxel_size=VOXEL, reference=region,
                           reference_name="white matter", hct=0.45)  # fmt: skip
    assert result["reference"] == "white matter" and result["hct"] == 0.45
    assert result["reference_ppm"] == pytest.approx(np.median(scene.chi[region]))
    assert result["Y"] == pytest.approx(oxygen_saturation(result["dchi_ppm"], hct=0.45))


def test_thin_veins_are_measured_on_their_centrelines_and_said_so():
    shape = (30, 30, 30)
    veins = np.zeros(shape, bool)
    veins[5:25, 14:16, 15] = True  # two voxels across: none one voxel deep
    chi = np.zeros(shape, np.float32)
    chi[5:25, 14, 15], chi[5:25, 15, 15] = 0.3, 0.2  # partial volume on one side
    result = measure_veins(chi, veins, np.ones(shape, bool), voxel_size=VOXEL)
    assert result["measured_on"].startswith("centrelines")
    assert result["vein_ppm"] == pytest.approx(0.3) and result["measured_volume_mm3"] == 20 * 8
    assert result["vein_volume_mm3"] == 40 * 8.0
    empty = measure_veins(chi, np.zeros(shape, bool), np.ones(shape, bool), voxel_size=VOXEL)
    assert empty["vein_ppm"] is None and empty["Y"] is None and empty["measured_on"] is None


def test_veins_near_the_brains_edge_are_not_measured():
    shape = (40, 40, 40)
    mask = np.zeros(shape, bool)
    mask[2:38, 2:38, 2:38] = True
    veins = np.zeros(shape, bool)
    chi = np.zeros(shape, np.float32)
    veins[8:32, 3:6, 18:21], chi[8:32, 3:6, 18:21] = True, 0.6  # a residual streak at the edge
    veins[8:32, 18:21, 18:21], chi[8:32, 18:21, 18:21] = True, 0.3  # a deep vein
    result = measure_veins(chi, veins, mask, voxel_size=VOXEL, min_depth_mm=10.0)
    assert result["vein_ppm"] == pytest.approx(0.3) and result["measured_on"] == "wide veins"
    assert measure_veins(chi, veins, mask, voxel_size=VOXEL, min_depth_mm=0)["vein_ppm"] > 0.3
