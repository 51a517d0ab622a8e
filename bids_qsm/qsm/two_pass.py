"""Two-pass artefact reduction around strong sources (Stewart et al. MRM 2022, QSMxT).

Bleeds, calcifications, large veins and the edges of air sinuses are strong sources whose own
voxels carry a field the echo fit cannot measure well: little signal (short T2*), and a field
that changes so fast within the voxel that the phase no longer follows it. Inverted with the
rest, such a voxel's error spreads through the dipole kernel as streaks into the tissue around it.
QSMxT therefore inverts twice: pass 1 on a mask that leaves out the voxels of poor phase quality
and keeps the holes they make (background removal then treats the strong source as a source
outside the mask, and its field around it as background), pass 2 on the full, filled mask; the
map is pass 1 where pass 1 is valid and pass 2 in the voxels pass 1 left out.

- `hollow_mask`: the pass-1 mask, from the echo fit's field and noise maps.
- `combine`: the two passes joined into one map.
"""

import logging

import numpy as np
from scipy import ndimage

from .mask import typical_noise, unreliable_voxels
from .unwrap import _bbox

logger = logging.getLogger(__name__)


def hollow_mask(
    mask, field_hz, noise_hz, *, echo_time_s=None, noise_factor=10.0, deviation_cycles=0.5
):
    """The pass-1 mask: `mask` less every voxel whose field is unreliable, holes kept (bool).

    mask: bool, the full mask (after the unreliable edge is left out, `mask.reliable_field`);
    field_hz, noise_hz: the echo fit's field and its standard error (Hz; the noise may be
    relative, only its ratio to the median counts); echo_time_s: the last echo time (s), or
    None to skip the second test. A voxel is left out where its noise exceeds `noise_factor`
    times the median noise in the mask (little signal: bleeds, calcifications, veins, which
    have a short T2*), or where its field departs from the median of its 26 neighbours in the
    mask by more than `deviation_cycles` / `echo_time_s` Hz: a field that changes between
    neighbours by half a cycle over the last echo (the default) dephases the voxel's own signal,
    and its phase no longer follows the field. Unlike `reliable_field`, this holds inside the
    brain too, and the holes are not filled back. Of what is kept, only the largest connected
    component stays (tissue cut off by holes has no boundary of its own for background removal).
    On the 2 mm head phantom (3 T, TE up to 28 ms) the defaults make holes of 15 voxels inside
    the brain: 3 of the 5 microbleed voxels (noise 19-22 times the median), 5 of the 12
    calcification voxels and 7 next to them; the veins (noise up to 10 times) stay.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = _bbox(mask, 1)
    inside = mask[box]
    field = np.asarray(field_hz, dtype=np.float32)[box]
    noise = np.asarray(noise_hz, dtype=np.float32)[box]
    finite = np.isfinite(field)
    bad = unreliable_voxels(
        inside, field, noise, typical_hz=typical_noise(noise, inside & finite),
        noise_factor=noise_factor,
        deviation_limit_hz=deviation_cycles / float(echo_time_s) if echo_time_s else None,
    )  # fmt: skip
    kept = inside & ~bad
    labels, n = ndimage.label(kept)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        kept = labels == int(np.argmax(sizes))
    out[box] = kept
    logger.info("two-pass: pass 1 leaves out %d of %d voxels", int(mask.sum() - out.sum()),
                int(mask.sum()))  # fmt: skip
    return out


def combine(chi_pass1, valid_pass1, chi_pass2, mask_pass2):
    """One map from the two passes: pass 1 where it is valid, pass 2 in the voxels it left out.

    chi_pass1, chi_pass2: susceptibility (ppm) of pass 1 (hollow mask) and pass 2 (full mask);
    valid_pass1: bool, where pass 1's local field (and so its chi) is valid; mask_pass2: bool,
    the support of pass 2's map. The mean of chi is not determined by the field, so each pass
    has its own offset: pass 2 is shifted by the median of (pass 1 - pass 2) over the voxels
    both cover, so that no step appears at the holes' edges (QSMxT adds the maps as they are;
    the reference region is applied after this). Returns (chi in ppm, float32, 0 outside the
    union of both supports; that union, bool; the offset added to pass 2, ppm).
    """
    valid1 = np.asarray(valid_pass1, dtype=bool)
    mask2 = np.asarray(mask_pass2, dtype=bool)
    chi1 = np.asarray(chi_pass1, dtype=np.float32)
    chi2 = np.asarray(chi_pass2, dtype=np.float32)
    both = valid1 & mask2
    offset = float(np.median(chi1[both] - chi2[both])) if both.any() else 0.0
    chi = np.where(valid1, chi1, np.where(mask2, chi2 + np.float32(offset), np.float32(0.0)))
    return chi.astype(np.float32), valid1 | mask2, offset
