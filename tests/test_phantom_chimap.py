"""The realistic-brain fixture: a real (or synthetic) chi map placed in the simulated head."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from bids_qsm import phantom
from bids_qsm.phantom_chimap import (
    CALCIFICATION,
    MICROBLEED,
    brain_labels,
    load_chi_map,
    reorient,
    simulate_from_chi_map,
)
from bids_qsm.qsm.units import hz_per_ppm

VOXEL = 1.5  # mm, of the synthetic map and of the acquisitions made from it
TILT = 15.0  # deg


def _synthetic_brain(shape=(60, 70, 58)):
    """A brain-shaped chi map (ppm, 0 outside) on a 1.5 mm RAS grid: white matter -0.03, a
    cortex-like rim +0.02, a pair of nuclei +0.15, a vein +0.4 and smooth texture."""
    affine = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    affine[:3, 3] = -VOXEL * (np.asarray(shape) - 1) / 2
    i, j, k = np.indices(shape)
    x, y, z = (affine[a, a] * idx + affine[a, 3] for a, idx in enumerate((i, j, k)))
    r = np.sqrt((x / 36) ** 2 + (y / 42) ** 2 + (z / 32) ** 2)
    chi = np.where(r < 0.85, -0.03, 0.02) + 0.01 * np.sin(x / 5) * np.cos(y / 7)
    for side in (-1, 1):
        chi[np.sqrt((x - side * 14) ** 2 + (y - 4) ** 2 + (z + 2) ** 2) < 6] = 0.15
    chi[(np.hypot(x, z - 12) < 1.2) & (np.abs(y) < 25)] = 0.4
    chi[r >= 1] = 0
    return chi.astype(np.float32), affine


@pytest.fixture(scope="module")
def brain():
    return _synthetic_brain()


@pytest.fixture(scope="module")
def clean(brain):
    """No noise, tilted head: the physics of the truth."""
    return simulate_from_chi_map(*brain, snr=np.inf, tilt_deg=TILT, seed=4)


@pytest.fixture(scope="module")
def noisy(brain):
    return simulate_from_chi_map(*brain, snr=100.0, seed=5)


def _interior(mask, layers):
    return ndi.binary_erosion(mask, iterations=layers)


def _dipole_field_hz(chi, voxel, b0_dir, b0):
    """Field (Hz) of chi (ppm) by a plain FFT convolution on a grid padded to twice its size,
    written here apart from the code under test."""
    n = [2 * s for s in chi.shape]
    k = np.meshgrid(*[np.fft.fftfreq(m, voxel) for m in n], indexing="ij")
    k2 = sum(c**2 for c in k)
    k2[0, 0, 0] = 1.0
    kernel = 1 / 3 - sum(c * b for c, b in zip(k, b0_dir, strict=True)) ** 2 / k2
    kernel[0, 0, 0] = 0.0
    field = np.real(np.fft.ifftn(kernel * np.fft.fftn(chi, s=n, axes=(0, 1, 2))))
    return field[: chi.shape[0], : chi.shape[1], : chi.shape[2]] * hz_per_ppm(b0)


def _harmonic_residual(values, mask, affine):
    """`values` in `mask` less their least-squares fit by the solid harmonics of order <= 2."""
    xyz = affine[:3, :3] @ np.argwhere(mask).T + affine[:3, 3:]
    x, y, z = (xyz - xyz.mean(axis=1, keepdims=True)) / 100
    design = np.stack(
        [x * 0 + 1, x, y, z, x * y, y * z, x * z, x * x - y * y, 2 * z * z - x * x - y * y], 1
    )
    target = values[mask]
    return target - design @ np.linalg.lstsq(design, target, rcond=None)[0]


def test_local_field_is_the_dipole_field_of_chi_in_the_mask(clean):
    """Tilted head: the kernel's B0 is scanner z, pitched by the tilt in the voxel axes."""
    t = np.radians(TILT)
    b0_dir = (0.0, np.sin(t), np.cos(t))  # scanner z in the voxel axes of the pitched grid
    expected = _dipole_field_hz(clean.chi * clean.mask, VOXEL, b0_dir, clean.b0)
    inside = clean.mask
    error = clean.local_field_hz[inside] - expected[inside]
    assert np.sqrt(np.mean(error**2)) < 0.01 * np.sqrt(np.mean(expected[inside] ** 2))
    assert np.all(clean.local_field_hz[~clean.mask] == 0)
    untilted = _dipole_field_hz(clean.chi * clean.mask, VOXEL, (0, 0, 1), clean.b0)
    assert np.sqrt(np.mean((clean.local_field_hz - untilted)[inside] ** 2)) > 5 * np.sqrt(
        np.mean(error**2)
    )


def test_total_field_is_local_plus_the_shimmed_field_of_the_rest(clean):
    """total - local is the field of the sources outside the mask (air, bone, scalp, CSF) and
    of the brain as water, less a second-order shim: computed again here from the truth."""
    background = clean.field_hz - clean.local_field_hz
    # relative to air (air beyond the grid too); the brain counts as water here
    outside = np.where(clean.mask, 0.0, clean.chi) - phantom.CHI_AIR
    t = np.radians(TILT)
    expected = _dipole_field_hz(outside, VOXEL, (0.0, np.sin(t), np.cos(t)), clean.b0)
    deep = _interior(clean.mask, 4)
    residual = _harmonic_residual(background - expected, deep, clean.affine)
    scale = np.sqrt(np.mean(_harmonic_residual(expected, deep, clean.affine) ** 2))
    assert scale > 1.0  # Hz: air and bone leave a field that the shim does not remove
    # measured 0.12-0.16: the phantom's sources act from its finer grid (sub-voxel bone and air)
    # and wrap around its FFT box (padded by 1/8 per side) where this one pads to twice the size
    assert np.sqrt(np.mean(residual**2)) < 0.25 * scale
    # and what is left of the background in the brain is harmonic: its Laplacian vanishes
    lap_background = ndi.laplace(background.astype(np.float64))[deep]
    lap_local = ndi.laplace(clean.local_field_hz.astype(np.float64))[deep]
    assert np.sqrt(np.mean(lap_background**2)) < 0.1 * np.sqrt(np.mean(lap_local**2))


def test_phase_is_field_times_te_plus_the_offset(noisy):
    """phase(TE) = 2 pi f TE + phi0 where the signal is strong, to within the noise."""
    strong = _interior(noisy.mask, 2) & (noisy.magnitude[..., -1] > 0.3 * noisy.magnitude.max())
    assert strong.sum() > 0.5 * noisy.mask.sum()
    for n, te in enumerate(noisy.echo_times):
        model = 2 * np.pi * noisy.field_hz * te + noisy.phase_offset
        error = np.abs(np.angle(np.exp(1j * (noisy.phase[..., n] - model))))[strong]
        sigma = noisy.noise_sigma / noisy.magnitude[..., n][strong]  # phase noise (rad)
        assert np.median(error / sigma) < 1.5  # |N(0, 1)| has median 0.67
        assert np.quantile(error, 0.999) < 0.2


def test_phase_offset_is_smooth_a_few_radians_and_not_harmonic(noisy):
    offset = noisy.phase_offset.astype(np.float64)
    inside = noisy.mask
    assert 1.0 < np.ptp(offset[inside]) < 12.0
    residual = _harmonic_residual(offset, inside, noisy.affine)
    # rad that no background model can take (at TE 4 ms, 0.1 rad is 4 Hz); measured 0.15
    assert np.sqrt(np.mean(residual**2)) > 0.1
    laplacian = ndi.laplace(offset)[_interior(inside, 1)]
    assert np.all(np.sign(laplacian) == np.sign(laplacian.mean()))
    assert np.abs(laplacian).min() > 1e-4  # rad per voxel^2, everywhere


def test_foci_are_where_the_truth_says(brain):
    """The field that the planted foci add is that of point dipoles of their moment at the
    centre of their labels."""
    with_foci = simulate_from_chi_map(*brain, snr=np.inf, seed=6)
    without = simulate_from_chi_map(*brain, snr=np.inf, seed=6, foci=False)
    assert not np.isin(without.labels, [MICROBLEED, CALCIFICATION]).any()
    extra = with_foci.local_field_hz - without.local_field_hz
    index = np.indices(extra.shape).reshape(3, -1).T
    world = index @ with_foci.affine[:3, :3].T + with_foci.affine[:3, 3]
    for label, sign in [(MICROBLEED, 1), (CALCIFICATION, -1)]:
        focus = with_foci.labels == label
        assert 3 <= focus.sum() <= 40  # a ball of 2 mm radius on 1.5 mm voxels
        assert sign * with_foci.chi[focus].max() > 0.8
        added = (with_foci.chi - without.chi)[ndi.binary_dilation(focus, iterations=2)]
        moment = added.sum() * VOXEL**3  # ppm mm^3
        assert sign * moment > 0.6 * 4 / 3 * np.pi * 2.0**3
        centre = world[focus.ravel()].mean(axis=0)
        offset = world - centre
        r = np.linalg.norm(offset, axis=1)
        shell = (r > 5.0) & (r < 12.0)
        offset, r = offset[shell], r[shell]
        cos2 = (offset[:, 2] / r) ** 2  # B0 along scanner z
        dipole = moment / (4 * np.pi * r**3) * (3 * cos2 - 1) * hz_per_ppm(with_foci.b0)
        measured = extra.ravel()[shell]
        assert np.corrcoef(measured, dipole)[0, 1] > 0.95
        assert 0.85 < np.dot(measured, dipole) / np.dot(dipole, dipole) < 1.15


def test_truth_follows_the_map_and_the_head_around_it(clean, brain):
    chi, affine = brain
    support_ml = (chi != 0).sum() * VOXEL**3 / 1000
    assert abs(clean.mask.sum() * VOXEL**3 / 1000 - support_ml) < 0.03 * support_ml
    assert {0, 24, 165, 258, 262, 9000, 9005} <= set(np.unique(clean.labels).tolist())
    assert np.all(clean.magnitude[_interior(clean.labels == 165, 1)] == 0)  # bone: no signal
    # the nuclei keep their chi and get a longer R2* than white matter
    nuclei = (clean.chi > 0.12) & (clean.chi < 0.18) & _interior(clean.mask, 1)
    white = np.abs(clean.chi + 0.03) < 0.005
    assert nuclei.sum() > 50 and white.sum() > 1000
    assert clean.r2star[nuclei].mean() > clean.r2star[white].mean() + 10
    # bone and air reach within a few mm of the brain, as in a head
    gap = ndi.distance_transform_edt(clean.labels != 165) * VOXEL
    assert np.median(gap[clean.mask & ~_interior(clean.mask, 1)]) < 5.0
    air = ndi.distance_transform_edt(clean.labels != 262) * VOXEL
    assert air[clean.mask].min() < 8.0


def test_labels_give_the_mask_and_the_r2star(brain):
    chi, affine = brain
    labels = np.where(chi != 0, 2, 0).astype(np.int32)  # white matter
    labels[(chi == 0.15)] = 13  # pallidum
    labels[:, :, : chi.shape[2] // 2 - 12] = 0  # a smaller brain than the map's support
    scan = simulate_from_chi_map(chi, affine, labels, snr=np.inf, foci=False)
    mask_ml = scan.mask.sum() * VOXEL**3
    # a block half brain, half CSF goes to the lower label (here the brain's): up to 4 % more
    assert abs(mask_ml - (labels > 0).sum() * VOXEL**3) < 0.06 * mask_ml
    core = _interior(scan.labels == 13, 1)
    assert core.sum() > 10
    np.testing.assert_allclose(scan.r2star[core], phantom.TISSUES[13][2], rtol=1e-5)
    assert scan.label_names[13] == "Left-Pallidum" and 9000 not in set(scan.labels.ravel())


def test_the_map_can_be_moved_and_reoriented():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    out = reorient(affine, (10, 20, 30), "rps")
    np.testing.assert_allclose(out[:3, :3], np.diag([1.0, -1.0, 1.0]))
    centre = np.array([4.5, 9.5, 14.5, 1.0])
    np.testing.assert_allclose(out @ centre, affine @ centre)
    with pytest.raises(ValueError):
        reorient(affine, (10, 20, 30), "RRS")
    with pytest.raises(ValueError, match="no brain"):
        brain_labels(np.zeros((8, 8, 8), np.float32))


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_cli_writes_a_dataset_with_the_truth(tmp_path, brain):
    chi, affine = brain
    chi_file = _save(tmp_path / "chi.nii.gz", chi, affine)
    out = tmp_path / "bids"
    args = [str(out), "--chi-map", str(chi_file), "--tilt", "10", "--snr", "50"]
    assert phantom.main([*args, "--echo-times", "0.005", "0.012", "0.019", "--b0", "7"]) == 0
    anat = out / "sub-01" / "anat"
    sidecar = json.loads((anat / "sub-01_echo-3_part-phase_MEGRE.json").read_text())
    assert sidecar["EchoTime"] == 0.019 and sidecar["MagneticFieldStrength"] == 7.0
    truth = out / "derivatives" / "phantom" / "sub-01" / "anat"
    names = dict(
        line.split("\t") for line in (truth.parents[1] / "dseg.tsv").read_text().split("\n")[1:-1]
    )
    labels = np.asarray(nib.load(truth / "sub-01_dseg.nii.gz").dataobj)
    assert {str(c) for c in np.unique(labels)} <= names.keys()
    assert names["9000"] == "Brain" and names["9007"] == "Microbleed"
    saved_chi = nib.load(truth / "sub-01_Chimap.nii.gz")
    mask = np.asarray(nib.load(truth / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    assert np.isclose(np.degrees(np.arccos(abs(saved_chi.affine[2, 2] / VOXEL))), 10.0)
    local = np.asarray(nib.load(truth / "sub-01_desc-local_fieldmap.nii.gz").dataobj)
    assert np.abs(local[mask]).max() > 20.0  # Hz: 7 T
    for suffix in ("R2starmap", "desc-total_fieldmap", "desc-offset_phasemap"):
        assert (truth / f"sub-01_{suffix}.nii.gz").exists()
    description = json.loads((out / "dataset_description.json").read_text())
    assert "chi-map" in description["Name"]
    validator = shutil.which("bids-validator-deno")
    if validator is not None:
        result = subprocess.run(
            [validator, str(out), "--format", "json"], capture_output=True, text=True, timeout=120
        )
        issues = json.loads(result.stdout)["issues"]["issues"]
        assert [i for i in issues if i["severity"] == "error"] == []


@pytest.mark.parametrize(
    "extra, code",
    [
        (["--labels", "labels.nii.gz"], 66),  # labels on another grid
        (["--chi-axcodes", "RRS"], 2),
        (["--lesions"], 2),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, brain, capsys, extra, code):
    chi, affine = brain
    chi_file = _save(tmp_path / "chi.nii.gz", chi, affine)
    _save(tmp_path / "labels.nii.gz", np.ones((5, 5, 5), np.int16), affine)
    extra = [str(tmp_path / e) if e.endswith(".nii.gz") else e for e in extra]
    argv = [str(tmp_path / "out"), "--chi-map", str(chi_file), *extra]
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            phantom.main(argv)
        assert exit_info.value.code == 2
    else:
        assert phantom.main(argv) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "labels.nii.gz" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_unreadable_map_and_options_without_a_map(tmp_path, capsys):
    (tmp_path / "chi.nii.gz").write_text("not a NIfTI")
    assert phantom.main([str(tmp_path / "out"), "--chi-map", str(tmp_path / "chi.nii.gz")]) == 66
    assert "chi.nii.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        phantom.main([str(tmp_path / "out"), "--no-foci"])
    assert exit_info.value.code == 2


def test_cosmos_map_in_the_head(shared_data):
    """The 2016 challenge's COSMOS map (stored RPS under an RAS header), acquired at 2 mm."""
    folder = shared_data / "qsm2016"
    chi, affine, _ = load_chi_map(folder / "chi_cosmos.nii.gz", axcodes="RPS")
    scan = simulate_from_chi_map(chi, affine, voxel_size=(2.0, 2.0, 2.0), tilt_deg=10, seed=2)
    support_ml = np.count_nonzero(chi) * np.prod(np.linalg.norm(affine[:3, :3], axis=0)) / 1000
    mask_ml = scan.mask.sum() * 8 / 1000
    assert abs(mask_ml - support_ml) < 0.03 * support_ml
    assert 0.8 < scan.chi[scan.mask].std() / chi[chi != 0].std() < 1.0  # 2 mm voxels smooth it
    assert (scan.labels == 9005).sum() > 10 and (scan.labels == MICROBLEED).sum() > 0
    # the anterior of the map faces the frontal sinus: air in front of the brain, not behind
    sinus = np.argwhere(scan.labels == 262) @ scan.affine[:3, :3].T + scan.affine[:3, 3]
    brain_centre = np.argwhere(scan.mask).mean(0) @ scan.affine[:3, :3].T + scan.affine[:3, 3]
    assert np.mean(sinus[:, 1] > brain_centre[1]) > 0.5
    # the phase at echo 1 follows the truth where the signal is strong
    strong = _interior(scan.mask, 2)
    model = 2 * np.pi * scan.field_hz * scan.echo_times[0] + scan.phase_offset
    error = np.abs(np.angle(np.exp(1j * (scan.phase[..., 0] - model))))[strong]
    assert np.median(error) < 0.03
    t = np.radians(10)
    expected = _dipole_field_hz(scan.chi * scan.mask, 2.0, (0.0, np.sin(t), np.cos(t)), scan.b0)
    error = (scan.local_field_hz - expected)[scan.mask]
    assert np.sqrt(np.mean(error**2)) < 0.01 * np.sqrt(np.mean(expected[scan.mask] ** 2))
