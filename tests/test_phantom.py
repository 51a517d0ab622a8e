"""The head phantom: physics of the simulated signal, the BIDS dataset it writes, its CLI."""

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from bids_qsm import phantom
from bids_qsm.qsm.dipole import b0_direction
from bids_qsm.qsm.units import hz_per_ppm

SMALL = {"shape": (64, 72, 56), "voxel_size": (3.0, 3.0, 3.0), "oversample": 1}
ECHOES = (0.004, 0.010, 0.016, 0.022, 0.028)


def _interior(mask):
    """Voxels whose 6 neighbours are in `mask` too (no partial volume with other tissue)."""
    inner = mask.copy()
    for axis in range(3):
        for shift in (-1, 1):
            inner &= np.roll(mask, shift, axis=axis)
    return inner


@pytest.fixture(scope="module")
def clean():
    """Noise-free, no partial volume: the signal equation holds exactly in every voxel."""
    return phantom.simulate_head(**SMALL, snr=np.inf)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "bids"
    return phantom.write_dataset(out, subjects=2, **SMALL)


def test_magnitude_decays_at_the_tissue_r2star(clean):
    te = clean.echo_times
    for label, r2star in [(13, 40.0), (12, 25.0), (2, 20.0), (24, 2.0)]:  # literature values
        voxels = clean.labels == label  # one sample per voxel: no partial volume
        assert voxels.sum() > 5
        log_mag = np.log(clean.magnitude[voxels])
        slope = np.polyfit(te, log_mag.T, 1)[0]
        np.testing.assert_allclose(-slope, r2star, rtol=1e-3)
        np.testing.assert_allclose(clean.r2star[voxels], r2star, rtol=1e-5)


def test_phase_grows_with_te_at_the_true_field(clean):
    """phase(TE_n) - phase(TE_1) = 2 pi f (TE_n - TE_1), modulo 2 pi, positive field -> growth."""
    field = clean.field_hz[clean.mask]
    for n in range(1, len(clean.echo_times)):
        dte = clean.echo_times[n] - clean.echo_times[0]
        measured = clean.phase[..., n][clean.mask] - clean.phase[..., 0][clean.mask]
        error = np.angle(np.exp(1j * (measured - 2 * np.pi * field * dte)))
        assert np.abs(error).max() < 1e-3
    # where echo 1 -> 2 does not wrap, the unwrapped slope itself is the field
    dte = clean.echo_times[1] - clean.echo_times[0]
    slow = np.abs(2 * np.pi * field * dte) < 2.0
    measured = np.angle(np.exp(1j * (clean.phase[..., 1] - clean.phase[..., 0])))[clean.mask]
    np.testing.assert_allclose(measured[slow] / (2 * np.pi * dte), field[slow], atol=0.05)
    pi = np.float32(np.pi)  # [-pi, pi) as float32 numbers
    assert clean.phase.dtype == np.float32 and clean.phase.min() >= -pi and clean.phase.max() < pi


def test_partial_volume_and_noise_keep_the_phase_near_the_truth():
    scan = phantom.simulate_head(**{**SMALL, "oversample": 2}, snr=100.0)
    inner = _interior(_interior(scan.mask))
    dte = scan.echo_times[1] - scan.echo_times[0]
    dphase = np.angle(np.exp(1j * (scan.phase[..., 1] - scan.phase[..., 0])))
    error = np.angle(np.exp(1j * (dphase - 2 * np.pi * scan.field_hz * dte)))[inner]
    # noise of a phase difference at SNR 100 and the echo-2 decay: about 0.015 rad
    assert np.median(np.abs(error)) < 0.03
    noise = scan.magnitude[..., 0][scan.labels == 0]
    assert noise.mean() < 2 * scan.noise_sigma  # air: Rayleigh noise, no signal
    brain = scan.magnitude[..., 0][scan.mask].mean()
    assert 80 < brain / scan.noise_sigma < 120


@pytest.mark.parametrize("tilt", [0.0, 30.0])
def test_field_of_a_sphere_is_the_analytic_dipole(monkeypatch, tilt):
    """Only a sphere of soft tissue (chi 0, no brain: no shim) in air, through the whole code
    path, oblique or not."""
    radius, centre = 15.0, np.array([6.0, -9.0, 12.0])
    sphere = phantom.ellipsoid(centre, (radius,) * 3)
    monkeypatch.setattr(phantom, "head_structures", lambda folds: [(258, sphere, None)])
    scan = phantom.simulate_head(
        shape=(64, 64, 64), voxel_size=(3, 3, 3), snr=np.inf, tilt_deg=tilt, oversample=2
    )
    index = np.indices(scan.labels.shape).reshape(3, -1)
    world = (scan.affine[:3, :3] @ index + scan.affine[:3, 3:]).reshape(3, *scan.labels.shape)
    t = np.radians(tilt)  # the head, and the sphere with it, pitched about scanner x
    pitch = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    offset = world - (pitch @ centre)[:, None, None, None]
    r = np.linalg.norm(offset, axis=0)
    shell = (r > 1.5 * radius) & (r < 3 * radius)
    delta_chi = (0.0 - 9.41) * hz_per_ppm(scan.b0)  # water vs air

    def rms_error(cos_theta):
        analytic = delta_chi / 3 * (radius / r) ** 3 * (3 * cos_theta**2 - 1)
        return np.sqrt(np.mean((scan.field_hz - analytic)[shell] ** 2 / analytic[shell].std() ** 2))

    right = rms_error(offset[2] / r)  # B0 along scanner z
    assert right < 0.03
    if tilt:
        grid_z = np.einsum("i...,i->...", offset, scan.affine[:3, 2] / 3.0) / r
        assert rms_error(grid_z) > 3 * right  # a kernel along the voxel axis would fail


def test_tilt_gives_an_oblique_affine_and_the_same_head_in_voxels(clean):
    tilted = phantom.simulate_head(**SMALL, snr=np.inf, tilt_deg=20.0)
    b0 = b0_direction(tilted.affine)
    assert np.isclose(np.degrees(np.arccos(abs(b0[2]))), 20.0)
    assert np.array_equal(tilted.labels, clean.labels)
    assert np.abs(tilted.field_hz - clean.field_hz)[clean.mask].max() > 5.0


def test_same_seed_same_scan_other_subject_other_head():
    one = phantom.simulate_head(**SMALL, seed=3, subject=1)
    again = phantom.simulate_head(**SMALL, seed=3, subject=1)
    other = phantom.simulate_head(**SMALL, seed=3, subject=2)
    assert np.array_equal(one.phase, again.phase) and np.array_equal(one.magnitude, again.magnitude)
    assert not np.array_equal(one.labels, other.labels)
    assert abs(int(one.mask.sum()) - int(other.mask.sum())) < 0.15 * one.mask.sum()


def test_truth_maps_hold_the_literature_values(clean):
    for label, chi in [(13, 0.15), (52, 0.15), (11, 0.06), (10, 0.01), (2, -0.03), (24, 0.0)]:
        np.testing.assert_allclose(clean.chi[clean.labels == label], chi, atol=1e-6)
    assert {0, 165, 262, 9005, 9006, 9007} <= set(np.unique(clean.labels).tolist())
    assert not clean.mask[clean.labels == 165].any() and clean.mask[clean.labels == 9005].all()
    assert np.all(clean.magnitude[clean.labels == 165] == 0)
    assert np.all(clean.local_field_hz[~clean.mask] == 0)


def test_dataset_files_and_sidecars(dataset):
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]
    assert {"Name", "License", "Authors"} <= description.keys()
    assert (dataset / "participants.tsv").read_text().split() == [
        "participant_id",
        "sub-01",
        "sub-02",
    ]
    anat = dataset / "sub-02" / "anat"
    te = []
    for n in range(1, 6):
        for part in ("mag", "phase"):
            stem = anat / f"sub-02_echo-{n}_part-{part}_MEGRE"
            sidecar = json.loads(stem.with_suffix(".json").read_text())
            assert sidecar["MagneticFieldStrength"] == 3.0
            assert sidecar["Manufacturer"] == "bids_qsm phantom"
            assert (sidecar.get("Units") == "rad") == (part == "phase")
            image = nib.load(stem.with_suffix(".nii.gz"))
            assert image.shape == SMALL["shape"] and image.get_data_dtype() == np.float32
        te.append(sidecar["EchoTime"])
    assert te == list(ECHOES)
    truth = dataset / "derivatives" / "phantom"
    assert (
        json.loads((truth / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    )
    for suffix in ("Chimap", "desc-brain_mask", "dseg", "R2starmap", "desc-total_fieldmap"):
        assert (truth / "sub-02" / "anat" / f"sub-02_{suffix}.nii.gz").exists()
    rows = [line.split("\t") for line in (truth / "dseg.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "name"]
    names = {int(index): name for index, name in rows[1:]}
    labels = np.asarray(nib.load(truth / "sub-02" / "anat" / "sub-02_dseg.nii.gz").dataobj)
    assert set(np.unique(labels).tolist()) <= names.keys()
    assert names[13] == "Left-Pallidum" and names[49] == "Right-Thalamus"


def test_pybids_finds_echoes_and_parts(tmp_path):
    bids = pytest.importorskip("bids")
    out = phantom.write_dataset(tmp_path / "bids", subjects=1, sessions=2, **SMALL)
    layout = bids.BIDSLayout(out, validate=False)
    files = layout.get(suffix="MEGRE", extension=".nii.gz")
    assert len(files) == 2 * 5 * 2
    assert {int(f.entities["echo"]) for f in files} == {1, 2, 3, 4, 5}
    assert {f.entities["part"] for f in files} == {"mag", "phase"}
    assert layout.get_sessions() == ["01", "02"]
    assert layout.get_metadata(files[0].path)["EchoTime"] in ECHOES


@pytest.mark.parametrize("root", [".", "derivatives/phantom"])
def test_bids_validator_finds_no_errors(dataset, root):
    validator = shutil.which("bids-validator-deno")
    if validator is None:
        pytest.skip("bids-validator-deno is not installed")
    result = subprocess.run(
        [validator, str(dataset / root), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    issues = json.loads(result.stdout)["issues"]["issues"]
    errors = [issue for issue in issues if issue["severity"] == "error"]
    assert result.returncode == 0 and errors == []


def test_siemens_units_are_integers_in_range(tmp_path, clean):
    scan = phantom.simulate_head(**SMALL, snr=np.inf, phase_units="siemens")
    assert scan.phase.dtype == np.int16 and scan.phase_units == "arbitrary"
    assert scan.phase.min() >= -4096 and scan.phase.max() <= 4095
    np.testing.assert_allclose(scan.phase * np.pi / 4096, clean.phase, atol=np.pi / 4096 + 1e-6)
    out = phantom.main([str(tmp_path), *_small_args(), "--phase-units", "siemens"])
    assert out == 0
    stem = tmp_path / "sub-01" / "anat" / "sub-01_echo-3_part-phase_MEGRE"
    assert json.loads(stem.with_suffix(".json").read_text())["Units"] == "arbitrary"
    assert nib.load(stem.with_suffix(".nii.gz")).get_data_dtype() == np.int16


def _small_args():
    return ["--shape", "64", "72", "56", "--voxel-size", "3", "3", "3", "--oversample", "1"]


@pytest.mark.parametrize(
    "args",
    [
        ["--shape", "64", "64"],
        ["--echo-times", "0.01", "0.005"],
        ["--phase-units", "degrees"],
        ["--snr", "-1"],
        ["--oversample", "0"],
        ["--subjects", "0"],
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        phantom.main([str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_foreign_folder_and_rewrites_its_own(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert phantom.main([str(tmp_path), *_small_args()]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    out = tmp_path / "bids"
    assert phantom.main([str(out), *_small_args(), "--subjects", "2"]) == 0
    assert phantom.main([str(out), *_small_args(), "--seed", "1"]) == 0
    assert not (out / "sub-02").exists() and (out / "sub-01").is_dir()
