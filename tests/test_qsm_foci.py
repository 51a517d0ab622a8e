"""Foci of both signs against a scene with planted microbleeds, calcifications, nuclei, veins."""

import numpy as np
import pytest
from readout_scenes import AFFINE, VOXEL, WM, make_scene, to_mm

from bids_qsm.qsm.foci import DIAMAGNETIC, PARAMAGNETIC, centroids_mm, find_foci


@pytest.fixture(scope="module")
def scene():
    return make_scene()


def test_every_planted_focus_is_found_with_its_sign_and_nothing_else(scene):
    dseg, foci = find_foci(scene.chi, scene.mask, voxel_size=VOXEL, magnitude=scene.magnitude)
    found = [(np.asarray(c), 1 if f["class"] == "paramagnetic" else -1)
             for f, c in zip(foci, centroids_mm(foci, AFFINE), strict=True)]  # fmt: skip
    for centre, sign in scene.foci:
        distance = min(np.linalg.norm(c - centre) for c, s in found if s == sign)
        assert distance < 4.0, f"focus at {centre} ({sign:+d}) missed"
    # no extra: the nuclei (0.12-0.15 ppm), the veins and the bleed at the brain's edge are out
    assert len(foci) == len(scene.foci)
    assert not (dseg > 0)[scene.nuclei | scene.veins].any()
    for focus in foci:
        label = PARAMAGNETIC if focus["class"] == "paramagnetic" else DIAMAGNETIC
        assert np.all(dseg[focus["region"]] == label)
        assert np.sign(focus["mean_ppm"]) == np.sign(focus["peak_ppm"])
        assert focus["moment_ppm_mm3"] == pytest.approx(focus["mean_ppm"] * focus["volume_mm3"])
        assert focus["magnitude_ratio"] < 0.85


def test_moment_of_a_calcification_on_the_true_map(scene):
    """On the block-averaged truth (no inversion), the integrated moment of the 3 mm-radius
    calcification of -1 ppm is its volume times -1 ppm; the half-maximum region's moment
    (volume x mean) misses its partial-volume edge."""
    _, foci = find_foci(scene.true_chi, scene.mask, voxel_size=VOXEL, magnitude=scene.magnitude)
    centres = centroids_mm(foci, AFFINE)
    calc = next(f for f, c in zip(foci, centres, strict=True)
                if np.linalg.norm(np.asarray(c) - (-20, 30, -14)) < 2)  # fmt: skip
    box = scene.true_chi[15:29, 40:54, 10:24]  # around the calcification (voxel 21.5, 46.5, 16.5)
    excess = box - WM
    true_moment = float(excess[excess < 0].sum() * np.prod(VOXEL))  # ppm mm^3, as painted
    assert true_moment == pytest.approx(-(4 / 3) * np.pi * 3.0**3, rel=0.25)
    assert calc["class"] == "diamagnetic"
    assert calc["integrated_ppm_mm3"] == pytest.approx(true_moment, rel=0.1)
    assert true_moment < calc["moment_ppm_mm3"] < 0.4 * true_moment
    assert calc["surround_ppm"] == pytest.approx(WM, abs=0.01)


def test_spots_bright_on_the_magnitude_are_not_foci(scene):
    flat = np.where(scene.mask, 1.0, 0.0).astype(np.float32)
    _, foci = find_foci(scene.chi, scene.mask, voxel_size=VOXEL, magnitude=flat)
    assert foci == []


def test_r2star_corroborates_when_there_is_no_magnitude(scene):
    r2star = np.where(scene.magnitude > 0, -np.log(np.maximum(scene.magnitude, 1e-3) / 0.7) / 0.02,
                      0).astype(np.float32)  # fmt: skip
    _, with_r2 = find_foci(scene.chi, scene.mask, voxel_size=VOXEL, r2star=r2star)
    assert len(with_r2) == len(scene.foci)
    _, flat = find_foci(scene.chi, scene.mask, voxel_size=VOXEL, r2star=np.full_like(r2star, 20))
    assert flat == []


def test_the_lobe_beside_a_strong_bleed_is_not_a_calcification():
    shape = (40, 40, 40)
    chi = np.full(shape, WM, np.float32)
    chi[18:21, 18:21, 18:21] = 2.0  # a 6 mm bleed
    chi[18:20, 23:25, 19:21] = -0.5  # the inversion's negative lobe, 4 mm beside it
    magnitude = np.where(chi != WM, 0.2, 1.0).astype(np.float32)
    _, foci = find_foci(chi, np.ones(shape, bool), voxel_size=VOXEL, magnitude=magnitude)
    assert [f["class"] for f in foci] == ["paramagnetic"]


def test_a_focus_near_the_mask_edge_is_not_reported():
    shape = (40, 40, 40)
    chi = np.full(shape, WM, np.float32)
    mask = np.ones(shape, bool)
    mask[:3] = False
    chi[3:5, 18:21, 18:21] = 1.0  # 2-4 mm inside the mask
    chi[20:23, 18:21, 18:21] = 1.0
    _, foci = find_foci(np.where(mask, chi, 0), mask, voxel_size=VOXEL, edge_mm=6.0)
    assert [f["peak_vox"][0] for f in foci] == [pytest.approx(21, abs=1)]
    assert to_mm(foci[0]["centroid_vox"])[0] == pytest.approx(2 * 21 - 63, abs=0.5)
