"""Find a subject's lesion masks in `--lesion-dir`, as segmentations are found.

The folder is BIDS-Derivatives (e.g. a FLAIR lesion segmentation's output):
`sub-<l>[/ses-<l>]/anat/sub-<l>[_ses-<l>][_space-<s>]_desc-lesion_dseg.nii[.gz]` (labelled
lesions, names from its `dseg.tsv` or `desc-lesion_dseg.tsv` when there is one) or
`..._desc-lesion_mask.nii[.gz]` (binary: each connected piece is a lesion). On the MEGRE grid, or
with the subject's `*_T1w.nii[.gz]` beside it to register (as for `--segmentation-dir`). Every
problem is a `SegmentationError` whose text is one line naming the file.
"""

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_qsm.segmentation import (
    SegmentationError,
    _candidates,
    _check_sidecar_subject,
    _choose,
    _lookup,
    _strip,
    registration_reference,
)


@dataclass(frozen=True)
class LesionInput:
    """One run's lesion file and how to bring it onto the MEGRE grid."""

    path: Path  # the lesion dseg or mask
    names: dict  # {index: name}; empty for a binary mask (its connected pieces are the lesions)
    lookup: str  # where the names come from
    reference: Path | None  # T1w to register to the magnitude; None: already on the MEGRE grid

    @property
    def needs_registration(self) -> bool:
        return self.reference is not None


def find_lesions(lesion_dir, *, subject, session=None, target_shape, target_affine):
    """The lesion file of `subject` (and `session`) for a run on the given MEGRE grid
    (target_shape, target_affine as in `segmentation.find_segmentation`). A labelled
    `desc-lesion_dseg` wins over a `desc-lesion_mask`. Raises SegmentationError when the folder
    holds none for this subject, the file is empty or unreadable, its sidecar names another
    subject, or it lies on another grid with no T1w to register."""
    root = Path(lesion_dir)
    subject, session = _strip(subject, "sub-"), _strip(session, "ses-")
    if not root.is_dir():
        raise SegmentationError(root, "lesion directory does not exist")
    problems = []
    for suffix in ("dseg", "mask"):
        try:
            candidates = _candidates(root, subject, session, "lesion", suffix=suffix,
                                     what=f"desc-lesion {suffix}")  # fmt: skip
        except SegmentationError as err:
            problems.append(err)
            continue
        path = _choose(root, candidates, target_shape, target_affine, what="lesion files")
        break
    else:
        # the problem with files of this kind (e.g. another subject's) says most
        told = [p for p in problems if "no *_" not in p.message]
        raise (told or [SegmentationError(
            root, f"no *_desc-lesion_mask or *_desc-lesion_dseg.nii[.gz] for sub-{subject}"
        )])[0]  # fmt: skip
    _check_sidecar_subject(path, subject)
    try:
        data = np.asanyarray(nb.load(path).dataobj)
    except Exception as err:  # nibabel raises many types for a damaged file
        raise SegmentationError(path, f"cannot read the image ({err})") from None
    if data.ndim != 3:
        raise SegmentationError(path, f"lesion image must be 3-D, it has shape {data.shape}")
    values = np.unique(data[data != 0])
    if not values.size:
        raise SegmentationError(path, "the lesion mask is empty (no lesion voxel)")
    names, lookup = {}, "connected pieces of the mask"
    if suffix == "dseg":
        try:
            names, lookup = _lookup(root, path, "auto")
        except SegmentationError:
            names, lookup = {int(v): f"lesion-{int(v)}" for v in values}, "label numbers"
    reference = registration_reference(
        root, path, subject, target_shape, target_affine, what="the lesions"
    )
    return LesionInput(path, names, lookup, reference)
