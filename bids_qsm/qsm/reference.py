"""Susceptibility referencing: which tissue is called 0 ppm.

QSM only determines susceptibility up to a constant (the dipole kernel is 0 at k = 0), so every
map is referenced to a region: the whole brain (`mean`), a segmented region such as the lateral
ventricles' CSF (`labels`), or left as the inversion produced it (`none`).
"""

import numpy as np


def reference_mean(chi_ppm, mask, *, labels=None, label_values=()):
    """Subtract the mean susceptibility (ppm) inside `mask`; 0 ppm outside the mask.

    `labels` and `label_values` are accepted for the common signature and ignored.
    """
    chi, mask = _masked(chi_ppm, mask)
    if not mask.any():
        raise ValueError("cannot reference to the mask mean: the mask is empty")
    return _shifted(chi, mask, float(np.mean(chi[mask], dtype=np.float64)))


def reference_none(chi_ppm, mask, *, labels=None, label_values=()):
    """Leave the susceptibility (ppm) as it is inside `mask`; 0 ppm outside the mask."""
    chi, mask = _masked(chi_ppm, mask)
    return np.where(mask, chi, np.float32(0.0))


def reference_labels(chi_ppm, mask, *, labels=None, label_values=()):
    """Subtract the mean susceptibility (ppm) over the voxels of `mask` whose label is listed.

    labels: integer label image on the grid of `chi_ppm` (e.g. a FreeSurfer aseg resampled to it);
    label_values: the labels of the reference region, e.g. (4, 43) for the lateral ventricles or
    (24,) for CSF in FreeSurfer aseg numbering. 0 ppm outside the mask.
    """
    chi, mask = _masked(chi_ppm, mask)
    if labels is None:
        raise ValueError("reference 'labels' needs a label image (labels=...)")
    labels = np.asarray(labels)
    if labels.shape != mask.shape:
        raise ValueError(f"label image shape {labels.shape} differs from the map's {mask.shape}")
    values = tuple(int(v) for v in np.atleast_1d(label_values))
    if not values:
        raise ValueError("reference 'labels' needs at least one label value (label_values=...)")
    region = mask & np.isin(labels, values)
    if not region.any():
        raise ValueError(f"reference labels {values} have no voxel inside the mask")
    return _shifted(chi, mask, float(np.mean(chi[region], dtype=np.float64)))


def _masked(chi_ppm, mask):
    chi = np.asarray(chi_ppm, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if chi.shape != mask.shape:
        raise ValueError(f"map shape {chi.shape} differs from mask shape {mask.shape}")
    return chi, mask


def _shifted(chi, mask, offset):
    return np.where(mask, chi - np.float32(offset), np.float32(0.0)).astype(np.float32)


REFERENCES = {"mean": reference_mean, "none": reference_none, "labels": reference_labels}
