"""Region tables (`--segmentation-dir`) scored against the head phantom's truth.

The truth of a region is the phantom's chi averaged over its true label on the MEGRE grid; a
table's mean is referenced like the run's map, so both are compared after removing their mean
over the voxels that the map and the true brain share. Two segmentations: the true labels on
the MEGRE grid, and the same head painted on a 1 mm T1w grid in another pose (a known rigid
motion) with a T1-like image beside it, which the pipeline must register to the magnitude.
"""

import json

import nibabel as nb
import numpy as np
import pytest
import scipy.ndimage as ndi

from bids_qsm.cli.run import main
from bids_qsm.interfaces.roi import LabelsOnGrid, RoiStats
from bids_qsm.phantom import (
    _CODES,
    _head_pose,
    _split_hemispheres,
    acquisition_affine,
    head_structures,
    paint,
    write_dataset,
)
from bids_qsm.qsm.roi import label_coverage, roi_statistics
from bids_qsm.segmentation import read_itk_transform, read_lookup, read_roi_table

pytest.importorskip("SimpleITK")

TILT_DEG, SEED, SNR = 12.0, 3, 50.0
# The T1w session's head pose relative to the MEGRE session's (MEGRE world mm -> T1w world mm).
MOTION_DEG, MOTION_MM = (5.0, -4.0, 6.0), (4.0, -6.0, 3.0)
ON_GRID_PPM, REGISTERED_PPM = 0.01, 0.015  # issue 14's region-table criterion
# Regions scored: brain labels of at least this many voxels; smaller ones (a microbleed, a
# calcification: 5-12 voxels at 2 mm) are all boundary, and their mean follows how a
# segmentation draws it. Veins (tubes 3-6 mm across) likewise, and are scored by the vein
# read-out instead.
MIN_VOXELS = 15
NOT_SCORED = ("Vein",)

# T1-weighted intensity of each phantom label (white matter brightest, CSF and bone dark, fat of
# the scalp bright), as a T1w beside a FreeSurfer-style segmentation shows them.
T1W = {
    258: 0.85, 165: 0.08, 262: 0.0, 24: 0.18, 4: 0.18, 43: 0.18, 14: 0.18, 15: 0.18,
    2: 1.0, 41: 1.0, 7: 0.95, 46: 0.95, 3: 0.6, 42: 0.6, 8: 0.62, 47: 0.62, 16: 0.88,
    10: 0.78, 49: 0.78, 11: 0.66, 50: 0.66, 12: 0.7, 51: 0.7, 13: 0.84, 52: 0.84,
    27: 0.74, 59: 0.74, 9001: 0.8, 9002: 0.8, 9003: 0.8, 9004: 0.8,
    9005: 0.4, 9006: 0.35, 9007: 0.5, 9000: 0.8,
}  # fmt: skip


def head_on_grid(shape, affine, *, tilt_deg, seed, subject=1, session=0, motion=None):
    """Phantom labels of `simulate_head(tilt_deg=, seed=, subject=, session=)`'s head sampled at
    the voxel centres of another grid (shape, voxel -> mm `affine`) of a scan where the head
    moved by `motion` (4x4, MEGRE world mm -> this scan's world mm; None: it did not move).

    Repeats `simulate_head`'s draws of pose and gyri from (seed, subject, session).
    """
    anatomy = np.random.default_rng([seed, subject]) if subject else None
    rng = np.random.default_rng([seed, subject, session, 1])
    pose = _head_pose(tilt_deg, anatomy, rng if subject else None)
    folds = (0.3, 1.1, 2.0) if anatomy is None else anatomy.uniform(0, 2 * np.pi, 3)
    motion = np.eye(4) if motion is None else motion
    vox_to_head = np.linalg.inv(pose) @ np.linalg.inv(motion) @ affine
    index = paint(tuple(shape), vox_to_head, head_structures(folds))
    _split_hemispheres(index, vox_to_head)
    return _CODES[index]


def t1w_like(labels, rng, *, noise=0.02):
    """T1-like image (arbitrary units) of a label image: `T1W` per label, blurred by half a voxel
    (partial volume), a smooth receive bias and Gaussian noise."""
    lut = np.zeros(int(_CODES.max()) + 1, np.float32)
    for label, value in T1W.items():
        lut[label] = value
    image = ndi.gaussian_filter(lut[labels], 0.5)
    x = np.linspace(-1, 1, labels.shape[0], dtype=np.float32)[:, None, None]
    return image * (1 + 0.1 * x) + rng.normal(0, noise, labels.shape).astype(np.float32)


def rigid(angles_deg, shift_mm):
    """4x4 rotation about x, y, z (degrees, in that order) and then a shift (mm)."""
    from scipy.spatial.transform import Rotation

    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    out[:3, 3] = shift_mm
    return out


def write_t1w_segmentation(root, bids, *, tilt_deg, seed, motion, voxel_mm=1.0):
    """A BIDS-Derivatives folder holding sub-01's labels and T1w on an axis-aligned `voxel_mm`
    grid (180 x 216 x 180 mm) of a session where the head moved by `motion` (MEGRE world mm ->
    T1w world mm), with the phantom's dseg.tsv."""
    shape = tuple(int(round(mm / voxel_mm)) for mm in (180, 216, 180))
    affine = acquisition_affine(shape, (voxel_mm,) * 3)
    labels = head_on_grid(shape, affine, tilt_deg=tilt_deg, seed=seed, motion=motion)
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nb.Nifti1Image(labels.astype(np.int16), affine).to_filename(
        anat / "sub-01_desc-aseg_dseg.nii.gz"
    )
    image = t1w_like(labels, np.random.default_rng(seed))
    nb.Nifti1Image(image, affine).to_filename(anat / "sub-01_desc-preproc_T1w.nii.gz")
    (root / "dseg.tsv").write_text((bids / "derivatives" / "phantom" / "dseg.tsv").read_text())
    return root


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 2 mm phantom (tilted, SNR 50) run with default options and its true segmentation on
    the grid; the run's magnitude, map and mask with labels registered from a T1w session."""
    root = tmp_path_factory.mktemp("regions_accuracy")
    bids = write_dataset(root / "bids", subjects=1, tilt_deg=TILT_DEG, snr=SNR, seed=SEED)
    truth_dir = bids / "derivatives" / "phantom"
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"),
                 "--skip-bids-validation", "--segmentation-dir", str(truth_dir)])  # fmt: skip
    assert code == 0
    anat, true_anat = out / "sub-01" / "anat", truth_dir / "sub-01" / "anat"
    true_labels = nb.load(true_anat / "sub-01_dseg.nii.gz")
    # `head_on_grid` repeats the phantom's draws: sampled on the MEGRE grid's voxel centres it
    # must give the true labels (a 2x2x2 majority) wherever partial volume does not decide.
    again = head_on_grid(true_labels.shape, true_labels.affine, tilt_deg=TILT_DEG, seed=SEED)
    agree = np.mean(again == np.asarray(true_labels.dataobj))
    assert agree > 0.98, f"head_on_grid no longer repeats simulate_head ({agree:.1%} agree)"
    motion = rigid(MOTION_DEG, MOTION_MM)
    t1w_dir = write_t1w_segmentation(
        root / "t1w_seg", bids, tilt_deg=TILT_DEG, seed=SEED, motion=motion
    )
    names = read_lookup(t1w_dir / "dseg.tsv")
    dseg = t1w_dir / "sub-01" / "anat" / "sub-01_desc-aseg_dseg.nii.gz"
    # The pipeline's own nodes on the run's data: the registration uses its first echo.
    moved = LabelsOnGrid(
        dseg=str(dseg), reference=str(dseg.with_name("sub-01_desc-preproc_T1w.nii.gz")),
        names=names, lookup=str(t1w_dir / "dseg.tsv"),
        magnitude=str(bids / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.nii.gz"),
        omp_nthreads=1,
    ).run(cwd=str(root))  # fmt: skip
    table = RoiStats(
        chimap=str(anat / "sub-01_Chimap.nii.gz"),
        mask=str(anat / "sub-01_desc-brain_mask.nii.gz"),
        labels=moved.outputs.labels, dseg=str(dseg), names=names, labels_meta=moved.outputs.meta,
    ).run(cwd=str(root))  # fmt: skip

    def image(path, dtype=float):
        return np.asarray(nb.load(path).dataobj).astype(dtype)

    return {
        "chi": image(anat / "sub-01_Chimap.nii.gz"),
        "mask": image(anat / "sub-01_desc-brain_mask.nii.gz", bool),
        "labels": image(anat / "sub-01_dseg.nii.gz", np.int32),
        "table": read_roi_table(anat / "sub-01_desc-roistats_Chimap.tsv"),
        "table_meta": json.loads((anat / "sub-01_desc-roistats_Chimap.json").read_text()),
        "registered_labels": image(moved.outputs.labels, np.int32),
        "registered_table": read_roi_table(table.outputs.out_file),
        "transform": read_itk_transform(moved.outputs.transform),
        "motion": motion,
        "names": names,
        "true_chi": image(true_anat / "sub-01_Chimap.nii.gz"),
        "true_labels": image(true_anat / "sub-01_dseg.nii.gz", np.int32),
        "brain": image(true_anat / "sub-01_desc-brain_mask.nii.gz", bool),
    }


def scored_regions(scene):
    """{index: name} of the brain labels scored (see MIN_VOXELS and NOT_SCORED)."""
    labels, brain = scene["true_labels"], scene["brain"]
    return {
        index: name
        for index, name in scene["names"].items()
        if np.sum(labels == index) >= MIN_VOXELS
        and brain[labels == index].all()
        and name not in NOT_SCORED
    }


def errors_against_truth(scene, rows, chi, mask):
    """{name: table mean - true mean} (ppm) over the scored regions, each side first referenced
    to its own mean over the voxels that `mask` and the true brain share: `chi` (the map the
    table was made from) has been referenced by the run, the truth not. The true mean of a
    region is the true chi averaged over its true label. A scored region without a row is NaN.
    """
    shared = mask & scene["brain"]
    offset, true_offset = chi[shared].mean(), scene["true_chi"][shared].mean()
    means = {int(row["index"]): float(row["mean"]) for row in rows}
    errors = {}
    for index, name in scored_regions(scene).items():
        true_mean = scene["true_chi"][scene["true_labels"] == index].mean() - true_offset
        errors[name] = means.get(index, np.nan) - offset - true_mean
    return errors


def worst(errors, limit):
    """Regions over `limit` (ppm) or missing, with their errors rounded, for a failure text."""
    return {k: round(v, 4) for k, v in errors.items() if not abs(v) <= limit}


def test_each_row_says_how_much_of_its_label_the_mask_covers():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[1:5, 1:5, 1:5] = 13  # wholly inside the mask
    labels[5:9, 1:5, 1:5] = 165  # a quarter inside: a skull label whose rim the mask touches
    labels[9, 9, 9] = 4  # outside: no row
    mask = np.zeros(labels.shape, bool)
    mask[:6] = True
    chi = np.where(labels == 13, 0.15, -2.0).astype(np.float32)
    assert label_coverage(labels, mask) == {13: 1.0, 165: 0.25}
    rows = roi_statistics(chi, mask, labels, voxel_size=(1, 1, 1))
    assert [(r["index"], r["coverage"], r["n_voxels"]) for r in rows] == [
        (13, 1.0, 64),
        (165, 0.25, 16),
    ]


def test_table_on_the_grid_is_the_map_over_the_true_labels(scene):
    """With the labels on the grid, the table adds nothing to the map's own error."""
    np.testing.assert_array_equal(scene["labels"], scene["true_labels"])
    chi, mask, labels = scene["chi"], scene["mask"], scene["labels"]
    for row in scene["table"]:
        index = int(row["index"])
        assert float(row["mean"]) == pytest.approx(chi[mask & (labels == index)].mean(), abs=1e-6)
    coverage = {int(k): v for k, v in scene["table_meta"]["LabelCoverage"].items()}
    assert coverage == pytest.approx(label_coverage(labels, mask), abs=1e-4)
    assert set(scored_regions(scene)) <= {int(row["index"]) for row in scene["table"]}


def test_registered_labels_keep_the_region_means(scene):
    """Registration and resampling alone: a T1w session's labels moved onto the MEGRE grid give
    the true regions' means within 0.015 ppm, on the true map and on the run's."""
    points = np.random.default_rng(1).normal(size=(3, 500))
    points = np.vstack([60 * points / np.linalg.norm(points, axis=0), np.ones(500)])
    error_mm = np.linalg.norm((scene["transform"] - scene["motion"]) @ points, axis=0)
    assert error_mm.mean() < 0.5, f"registration error {error_mm.mean():.2f} mm"
    brain = scene["brain"]
    true_chi = np.where(brain, scene["true_chi"] - scene["true_chi"][brain].mean(), 0)
    rows = roi_statistics(true_chi, brain, scene["registered_labels"], voxel_size=(2, 2, 2))
    errors = errors_against_truth(scene, rows, true_chi, brain)
    assert not worst(errors, REGISTERED_PPM), worst(errors, REGISTERED_PPM)
    # The run's map: the registered table against the table on the true labels.
    on_grid = {row["name"]: float(row["mean"]) for row in scene["table"]}
    moved = {row["name"]: float(row["mean"]) for row in scene["registered_table"]}
    shift = {n: moved.get(n, np.nan) - on_grid[n] for n in scored_regions(scene).values()}
    assert not worst(shift, REGISTERED_PPM), worst(shift, REGISTERED_PPM)


@pytest.mark.xfail(
    strict=True,
    reason="issue 14: the map's own region errors on this phantom exceed 0.01 ppm (brain stem "
    "+0.023, 4th ventricle +0.020, cerebellar white matter +0.015: a ramp of chi along the head "
    "that the data leave undetermined; dentate -0.015, whose field is noisy; docs/validation.md); "
    "the table adds nothing on the grid",
)
def test_region_tables_within_the_criterion(scene):
    """Issue 14: every scored region's table mean within 0.01 ppm of the truth with the labels on
    the MEGRE grid, within 0.015 ppm with labels registered from a T1w session."""
    errors = errors_against_truth(scene, scene["table"], scene["chi"], scene["mask"])
    moved = errors_against_truth(scene, scene["registered_table"], scene["chi"], scene["mask"])
    assert not worst(errors, ON_GRID_PPM) and not worst(moved, REGISTERED_PPM), (
        worst(errors, ON_GRID_PPM),
        worst(moved, REGISTERED_PPM),
    )
