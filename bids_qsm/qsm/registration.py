"""Rigid or affine registration of an anatomical image to the MEGRE grid, and resampling.

Transforms are 4x4 matrices acting on world coordinates (mm, the NIfTI RAS+ space of the
affines). `register` returns the matrix T that maps a point of the fixed (MEGRE) space to the
point of the moving (anatomical) space showing the same tissue: the direction in which an image
is pulled onto the fixed grid (ITK's "fixed to moving" convention, but in RAS+ rather than LPS).
A moving voxel index for a fixed voxel index i is `inv(moving_affine) @ T @ fixed_affine @ i`.

The optimisation uses SimpleITK (ITK's Mattes mutual information, multi-resolution gradient
descent), which copes with the different contrasts of a T1-weighted image and a gradient-echo
magnitude. Resampling is plain scipy, so labels and images follow the same matrix.
"""

import logging

import numpy as np
import scipy.ndimage as ndi

logger = logging.getLogger(__name__)

KINDS = ("rigid", "affine")


def register(
    fixed,
    moving,
    *,
    fixed_affine,
    moving_affine,
    kind="rigid",
    shrink_factors=(4, 2, 1),
    smoothing_mm=(4.0, 2.0, 1.0),
    histogram_bins=32,
    sampling=0.25,
    iterations=200,
    seed=0,
    num_threads=None,
):
    """World-to-world 4x4 matrix T (mm, RAS+) mapping fixed-space points to moving-space points.

    fixed: 3-D image (e.g. the first-echo magnitude, arbitrary units) with its 4x4 voxel-to-mm
    `fixed_affine`; moving: 3-D image of another contrast (e.g. a T1w, any voxel size) with
    `moving_affine`. kind: "rigid" (6 parameters) or "affine" (12; started from the rigid result).
    The cost is Mattes mutual information (`histogram_bins`, a random `sampling` fraction of the
    fixed voxels, fixed `seed`), optimised level by level over `shrink_factors` (voxels) and
    Gaussian `smoothing_mm` (mm). Two starts are tried, the images' own world alignment (scanner
    coordinates shared by one session) and their centres of mass matched; the better end point
    by the metric is kept. `num_threads`: ITK threads (None: ITK's default).
    """
    import SimpleITK as sitk

    if kind not in KINDS:
        raise ValueError(f"registration kind {kind!r} is not one of {KINDS}")
    if num_threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(num_threads))
    fixed_img = _to_sitk(fixed, fixed_affine)
    moving_img = _to_sitk(moving, moving_affine)
    options = {
        "shrink_factors": shrink_factors,
        "smoothing_mm": smoothing_mm,
        "histogram_bins": histogram_bins,
        "sampling": sampling,
        "iterations": iterations,
        "seed": seed,
    }
    starts = {
        "world": sitk.Euler3DTransform(),
        "moments": sitk.CenteredTransformInitializer(
            fixed_img,
            moving_img,
            sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        ),
    }
    best = None
    for name, start in starts.items():
        transform = sitk.Euler3DTransform(start)
        if name == "world":
            transform.SetCenter(_centre(fixed_img))
        value = _optimise(fixed_img, moving_img, transform, **options)
        logger.debug("rigid registration from the %s start: metric %.4f", name, value)
        if best is None or value < best[0]:
            best = (value, transform)
    transform = best[1]
    if kind == "affine":
        affine = sitk.AffineTransform(3)
        affine.SetCenter(transform.GetCenter())
        affine.SetMatrix(transform.GetMatrix())
        affine.SetTranslation(transform.GetTranslation())
        _optimise(fixed_img, moving_img, affine, **options)
        transform = affine
    return _matrix(transform)


def resample_labels(labels, *, moving_affine, target_shape, target_affine, transform=None):
    """Integer labels pulled onto a target grid by nearest neighbour; 0 outside the source grid.

    labels: 3-D integer image on the grid of `moving_affine`; target_shape, target_affine: the grid
    to fill (e.g. MEGRE); transform: 4x4 world matrix from `register` (None: identity, the
    images already share world coordinates). Keeps the labels' integer dtype.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    matrix = _voxel_map(moving_affine, target_affine, transform)
    return ndi.affine_transform(
        labels,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(target_shape),
        order=0,
        mode="constant",
        cval=0,
    )


def resample_image(image, *, moving_affine, target_shape, target_affine, transform=None):
    """A 3-D image pulled onto a target grid by trilinear interpolation (float32; 0 outside).

    Same geometry arguments as `resample_labels`; units are those of `image`.
    """
    matrix = _voxel_map(moving_affine, target_affine, transform)
    return ndi.affine_transform(
        np.asarray(image, dtype=np.float32),
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=tuple(target_shape),
        order=1,
        mode="constant",
        cval=0.0,
    )


def rotation_angle_deg(matrix):
    """Rotation angle (degrees) of the linear part of a 4x4 rigid matrix (its nearest rotation)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, float)[:3, :3])
    rotation = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def _voxel_map(moving_affine, target_affine, transform):
    """4x4 map from target voxel indices to moving voxel indices."""
    transform = np.eye(4) if transform is None else np.asarray(transform, float)
    return np.linalg.inv(np.asarray(moving_affine, float)) @ transform @ np.asarray(target_affine)


def _to_sitk(image, affine):
    """SimpleITK image of an (X, Y, Z) array whose physical space is the affine's world (RAS+).

    ITK wants spacing and an orthonormal direction: the affine's 3x3 part is split into its
    column norms and the nearest rotation (a shear, which scanners do not write, is dropped).
    """
    import SimpleITK as sitk

    affine = np.asarray(affine, float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    u, _, vt = np.linalg.svd(affine[:3, :3] / spacing)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(d) for d in (u @ vt).ravel()))
    img.SetOrigin(tuple(float(o) for o in affine[:3, 3]))
    return img


def _centre(img):
    """World coordinates (mm) of the centre of an image's grid."""
    size = np.asarray(img.GetSize(), float)
    return img.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2))


def _optimise(fixed, moving, transform, *, shrink_factors, smoothing_mm, histogram_bins, sampling,
              iterations, seed):  # fmt: skip
    """Run one multi-resolution mutual-information registration in place; final metric value."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(histogram_bins))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(float(sampling), int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    # Step lengths are in mm: the scales make a 1 mm shift and a 1 mm motion at the rim equal.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


def _matrix(transform):
    """4x4 world matrix of an ITK matrix-offset transform: x -> A (x - c) + c + t."""
    a = np.asarray(transform.GetMatrix(), float).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), float)
    t = np.asarray(transform.GetTranslation(), float)
    out = np.eye(4)
    out[:3, :3] = a
    out[:3, 3] = c + t - a @ c
    return out
