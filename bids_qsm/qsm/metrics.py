"""Accuracy metrics of a susceptibility map against a reference, as in the QSM challenges.

QSM reconstruction challenge 2016 (Langkammer et al., MRM 2018;79:1661) and 2.0 (2021):
- `nrmse`: 100 * ||x - y|| / ||y|| over the mask, after removing each map's mean in the mask
  (susceptibility is only defined up to an offset).
- `hfen`: the same on Laplacian-of-Gaussian filtered maps (sigma 1.5 voxels), i.e. the error of
  the fine structure.
- `ssim`: structural similarity (scikit-image) of the demeaned maps inside the mask's bounding box.
- `correlation`: Pearson correlation inside the mask.

All take (x, ref, mask): two maps in the same units (ppm) and a bool mask of the same 3-D grid.
"""

import numpy as np
from scipy import ndimage


def _demeaned(x, ref, mask):
    mask = np.asarray(mask, dtype=bool)
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape or x.shape != mask.shape:
        raise ValueError(f"shapes differ: {x.shape}, {ref.shape}, mask {mask.shape}")
    x = np.where(mask, x - x[mask].mean(), 0.0)
    ref = np.where(mask, ref - ref[mask].mean(), 0.0)
    return x, ref, mask


def nrmse(x, ref, mask):
    """Normalised RMS error (%) of `x` against `ref` in the mask, both demeaned in the mask."""
    x, ref, mask = _demeaned(x, ref, mask)
    return 100.0 * np.linalg.norm(x[mask] - ref[mask]) / np.linalg.norm(ref[mask])


def hfen(x, ref, mask, *, sigma=1.5):
    """High-frequency error norm (%): `nrmse` of Laplacian-of-Gaussian filtered maps.

    The maps are demeaned and set to zero outside the mask, filtered with a LoG of `sigma`
    voxels (the challenge's 15^3 kernel, sigma 1.5, is this filter truncated at 4.7 sigma),
    and compared in the mask (the challenge script filters the masked maps the same way).
    """
    x, ref, mask = _demeaned(x, ref, mask)
    lx = ndimage.gaussian_laplace(x, sigma)
    lref = ndimage.gaussian_laplace(ref, sigma)
    return 100.0 * np.linalg.norm(lx[mask] - lref[mask]) / np.linalg.norm(lref[mask])


def ssim(x, ref, mask):
    """Structural similarity of `x` and `ref` (1 is identical), scikit-image's definition.

    Both maps are demeaned in the mask and zeroed outside it, cropped to the mask's bounding
    box, and compared with a common data range: the range of the demeaned reference inside the
    mask (so a map is not rewarded for a smaller dynamic range). The SSIM map is averaged over
    the mask.
    """
    from skimage.metrics import structural_similarity

    x, ref, mask = _demeaned(x, ref, mask)
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    data_range = float(ref[mask].max() - ref[mask].min())
    _, smap = structural_similarity(
        x[box], ref[box], data_range=data_range, full=True, gaussian_weights=False
    )
    return float(smap[mask[box]].mean())


def correlation(x, ref, mask):
    """Pearson correlation coefficient of `x` and `ref` over the mask."""
    mask = np.asarray(mask, dtype=bool)
    return float(np.corrcoef(np.asarray(x)[mask], np.asarray(ref)[mask])[0, 1])
