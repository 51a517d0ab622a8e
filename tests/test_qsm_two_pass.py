"""Two-pass artefact reduction: the pass-1 mask, the combination, and a phantom with a strong
source whose unmeasurable field streaks a single-pass map."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_qsm.cli.parser import parse_args
from bids_qsm.config import Workflow
from bids_qsm.data import load_json
from bids_qsm.interfaces.inversion import HollowMask, TwoPass
from bids_qsm.provenance import SIDECAR_STAGES, apply_sidecar
from bids_qsm.qsm.background import lbv
from bids_qsm.qsm.dipole import forward_field
from bids_qsm.qsm.invert import tikhonov
from bids_qsm.qsm.two_pass import combine, hollow_mask
from bids_qsm.qsm.units import hz_per_ppm
from bids_qsm.workflows.qsm import estimate_mem_gb, init_inversion_wf

HZ_PER_PPM = hz_per_ppm(3.0)


def _grid(n):
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij")
    return x, y, z, np.sqrt(x**2 + y**2 + z**2)


def test_hollow_mask_leaves_out_unreliable_voxels_inside_and_keeps_the_holes():
    """A ball with a smooth field (3 Hz per voxel) and noise 0.1 Hz holds: a strong source
    (noise 30 times the median), a voxel whose field jumps 40 Hz from its neighbours (more than
    half a cycle over 20 ms, 25 Hz), a vein-like line of noise 5 times the median (kept), and a
    small block cut off from the rest by a shell of noisy voxels (dropped with it)."""
    x, y, z, r = _grid(40)
    mask = r < 16
    field = (3.0 * x + 0.05 * y * z).astype(np.float32)
    noise = np.full(mask.shape, 0.1, np.float32)
    source = np.sqrt((x - 5) ** 2 + y**2 + z**2) <= 2
    noise[source] = 3.0
    jump = (x == -5.5) & (y == 4.5) & (z == 0.5)
    field[jump] += 40.0
    vein = (np.abs(y + 6) < 1) & (np.abs(z) < 1) & (np.abs(x) < 10)
    noise[vein] = 0.5
    cube = np.maximum.reduce([np.abs(x), np.abs(y - 8), np.abs(z + 4)])
    island, shell = cube < 2, (cube >= 2) & (cube < 3)
    noise[shell] = 3.0

    kept = hollow_mask(mask, field, noise, echo_time_s=0.020)
    assert not (kept & ~mask).any()
    assert not kept[source].any() and not kept[jump].any() and not kept[shell].any()
    assert not kept[island].any()  # cut off by the shell: not the brain's component
    assert kept[vein].all()
    # the holes stay holes: nothing refills them
    assert ndimage.binary_fill_holes(kept)[source].all()
    others = mask & ~source & ~jump & ~shell & ~island
    assert kept[others].mean() > 0.995

    # Without an echo time only the noise test holds: the jump stays.
    kept = hollow_mask(mask, field, noise, echo_time_s=None)
    assert kept[jump].all() and not kept[source].any()
    # A stricter noise factor takes the vein too.
    kept = hollow_mask(mask, field, noise, echo_time_s=0.020, noise_factor=4.0)
    assert not kept[vein].any()


def test_combine_keeps_each_pass_exactly_where_it_should():
    """Pass 1 where it is valid, bit for bit; pass 2 elsewhere in its support, shifted by the
    offset between the passes on the voxels both cover; zero outside both."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    truth = rng.normal(0.0, 0.05, shape).astype(np.float32)
    x, y, z, r = _grid(24)
    mask2 = r < 10
    valid1 = (r < 11) & ~(np.sqrt((x - 3) ** 2 + y**2 + z**2) < 3)  # an edge beyond pass 2, a hole
    chi1 = np.where(valid1, truth, 0).astype(np.float32)
    chi2 = np.where(mask2, truth - 0.05, 0).astype(np.float32)  # pass 2's own zero
    chi2[~valid1 & mask2] += 1.0  # a strong source pass 1 left out: pass 2 alone has it
    chi, mask, offset = combine(chi1, valid1, chi2, mask2)
    assert offset == pytest.approx(0.05, abs=1e-6)
    assert np.array_equal(chi[valid1], chi1[valid1])
    hole = mask2 & ~valid1
    assert hole.sum() > 50
    np.testing.assert_allclose(chi[hole], truth[hole] + 1.0, atol=1e-6)
    assert np.array_equal(mask, valid1 | mask2) and not chi[~mask].any()
    assert chi.dtype == np.float32


def _strong_source_phantom():
    """A 64 mm ball of tissue (1 mm voxels, 3 T) with two blobs of +-0.05 ppm and a bleed of
    1 ppm, radius 3 mm, whose own field is unmeasurable (no signal: the echo fit returns noise
    of +-40 Hz there, with 30 times the median standard error). Returns chi (ppm), the brain,
    the fitted field (Hz), its noise (Hz) and the bleed."""
    x, y, z, r = _grid(64)
    brain = r < 26
    chi = np.zeros(brain.shape, np.float32)
    chi[brain & (np.sqrt((x + 10) ** 2 + (y - 6) ** 2 + z**2) < 6)] = 0.05
    chi[brain & (np.sqrt((x + 4) ** 2 + (y + 10) ** 2 + (z - 6) ** 2) < 5)] = -0.05
    bleed = np.sqrt((x - 8) ** 2 + y**2 + (z - 2) ** 2) < 3
    chi[bleed] = 1.0
    field = forward_field(chi, (1.0, 1.0, 1.0)) * HZ_PER_PPM
    rng = np.random.default_rng(3)
    noise = np.full(brain.shape, 0.1, np.float32)
    field = field + rng.normal(0.0, 0.1, brain.shape)
    field[bleed] = rng.uniform(-40.0, 40.0, bleed.sum())
    noise[bleed] = 3.0
    return chi, brain, field.astype(np.float32), noise, bleed


def _single_pass(field_hz, mask):
    local, valid = lbv(field_hz / HZ_PER_PPM, mask, voxel_size=(1.0, 1.0, 1.0))
    return tikhonov(local, valid, voxel_size=(1.0, 1.0, 1.0), regularization=0.01), valid


def _error(chi, truth, where):
    """RMS error (ppm) after removing the mean difference (the mean of chi is not measured)."""
    diff = chi[where] - truth[where]
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))


def test_two_pass_removes_the_streaks_of_a_strong_source():
    """The bleed's unmeasurable field streaks the single-pass map through the tissue around it.
    Pass 1 leaves the bleed out (its noise): the streaks go, in pass 1's region, and the
    combined map keeps pass 2's strong positive value in the bleed."""
    truth, brain, field, noise, bleed = _strong_source_phantom()
    chi2, valid2 = _single_pass(field, brain)
    hollow = hollow_mask(brain, field, noise, echo_time_s=0.02)
    assert not hollow[bleed].any() and (brain & ~hollow).sum() < 3 * bleed.sum()
    chi1, valid1 = _single_pass(field, hollow)
    chi, mask, _ = combine(chi1, valid1, chi2, valid2)

    # Tissue 3-12 mm from the bleed where pass 1 is valid, and all of pass 1's region.
    distance = ndimage.distance_transform_edt(~bleed)
    near = valid1 & (distance > 3) & (distance < 12)
    single_near, two_near = _error(chi2, truth, near), _error(chi, truth, near)
    single_all, two_all = _error(chi2, truth, valid1), _error(chi, truth, valid1)
    assert single_near > 0.015  # the streaks: a third of the blobs' contrast
    assert two_near < 0.35 * single_near
    assert two_all < 0.5 * single_all
    # The blobs' contrast survives, and the bleed stays strongly positive (from pass 2).
    blob = brain & (truth == 0.05)
    tissue = valid1 & (truth == 0)
    assert np.mean(chi[blob]) - np.mean(chi[tissue]) > 0.03
    assert np.mean(chi[bleed]) - np.mean(chi[tissue]) > 0.3
    assert mask[bleed].all()


def _save(path, data, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype), np.eye(4)), str(path))
    return str(path)


def test_interfaces_write_the_pass_1_mask_the_map_and_what_was_left_out(tmp_path, monkeypatch):
    """HollowMask leaves out the edge as background removal does and the bleed inside; TwoPass
    writes the joined map and the inversion's settings with a `two_pass` entry."""
    monkeypatch.chdir(tmp_path)
    truth, brain, field, noise, bleed = _strong_source_phantom()
    hollow = HollowMask(
        field=_save(tmp_path / "field.nii", field), noise=_save(tmp_path / "noise.nii", noise),
        mask=_save(tmp_path / "brain.nii", brain, np.uint8), echo_times=[0.004, 0.012, 0.020],
    ).run()  # fmt:skip
    kept = nib.load(hollow.outputs.out_file).get_fdata() > 0
    assert not kept[bleed].any()
    assert kept[brain & ~ndimage.binary_dilation(bleed, iterations=2)].all()
    assert hollow.outputs.params["unreliable_voxels"] == int((brain & ~kept).sum())
    assert {"noise_factor", "deviation_cycles"} <= set(hollow.outputs.params)

    chi2 = np.where(brain, truth + 0.01, 0)
    valid1 = brain & ~ndimage.binary_dilation(bleed, iterations=3)
    joined = TwoPass(
        chi_pass1=_save(tmp_path / "chi1.nii", np.where(valid1, truth, 0)),
        valid_pass1=_save(tmp_path / "valid1.nii", valid1, np.uint8),
        chi_pass2=_save(tmp_path / "chi2.nii", chi2),
        mask_pass2=_save(tmp_path / "mask2.nii", brain, np.uint8),
        inversion_params={"method": "tfi", "regularization": 0.005},
        hollow_params=hollow.outputs.params,
    ).run()  # fmt:skip
    chi = nib.load(joined.outputs.out_file).get_fdata()
    np.testing.assert_allclose(chi[brain], truth[brain], atol=1e-6)
    params = joined.outputs.params
    assert params["method"] == "tfi" and params["regularization"] == 0.005
    assert params["two_pass"]["voxels_from_pass2"] == int((brain & ~valid1).sum())
    assert params["two_pass"]["pass2_offset_ppm"] == pytest.approx(-0.01, abs=1e-6)


def test_workflow_adds_pass_1_beside_the_stable_nodes_and_says_so():
    mem = estimate_mem_gb(64**3, 3)
    single = init_inversion_wf(mem_gb=mem)
    two = init_inversion_wf(mem_gb=mem, two_pass=True, parameters={"two_pass": {"noise_factor": 8}})
    names = set(two.list_node_names())
    assert set(single.list_node_names()) < names
    assert {"hollow_mask", "background_pass1", "invert_pass1", "two_pass"} <= names
    assert two.get_node("hollow_mask").inputs.params == {"noise_factor": 8}
    assert two.get_node("background_pass1").inputs.method == "lbv"
    assert two.get_node("invert_pass1").inputs.method == "tfi"
    assert two.get_node("invert_pass1").mem_gb == two.get_node("invert").mem_gb
    graph = two._create_flat_graph()
    (edge,) = [
        (u.name, data) for u, v, data in graph.in_edges(data=True) if v.name == "reference"
        if ("out_file", "chimap") in data["connect"]
    ]  # fmt:skip
    assert edge[0] == "two_pass"
    text = load_json("citations.json")["two_pass"]["default"][0]
    assert text in two.visit_desc() and text not in single.visit_desc()


def test_command_line_and_reproduce(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    args = [str(bids), str(tmp_path / "out"), "participant"]
    assert parse_args(args)[0].workflow.two_pass is False
    assert parse_args([*args, "--two-pass"])[0].workflow.two_pass is True
    assert parse_args([*args, "--two_pass", "--no-two-pass"])[0].workflow.two_pass is False

    sidecar = {"PhaseScaling": {"units": "rad", "sign": 1}}
    sidecar.update({section: {"method": "x"} for section in SIDECAR_STAGES})
    sidecar["DipoleInversion"] = {
        "method": "tfi", "regularization": 0.005,
        "two_pass": {"noise_factor": 8.0, "deviation_cycles": 0.5, "unreliable_voxels": 12,
                     "voxels_from_pass2": 900, "pass2_offset_ppm": 0.001},
    }  # fmt:skip
    (tmp_path / "chi.json").write_text(json.dumps(sidecar))
    workflow = apply_sidecar(Workflow(), tmp_path / "chi.json")
    assert workflow.two_pass is True
    assert workflow.parameters["inversion"] == {"regularization": 0.005}
    assert workflow.parameters["two_pass"] == {"noise_factor": 8.0, "deviation_cycles": 0.5}
    del sidecar["DipoleInversion"]["two_pass"]
    (tmp_path / "chi.json").write_text(json.dumps(sidecar))
    assert apply_sidecar(Workflow(two_pass=True), tmp_path / "chi.json").two_pass is False
