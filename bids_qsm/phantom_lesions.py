"""Clinical findings planted in the head phantom: lesions with and without a paramagnetic rim,
extra microbleeds and calcifications, and the lesion masks a FLAIR segmentation would give.

The structures use the phantom's shapes (head-frame mm, `bids_qsm.phantom.ellipsoid`) and its
tissue table (`LESION_TISSUES` are listed in `bids_qsm.phantom.TISSUES`). `bids_qsm-phantom
--lesions` paints them after the healthy head and writes the masks as a BIDS-Derivatives folder
`derivatives/lesions` (`*_desc-lesion_dseg.nii.gz` with a `dseg.tsv`) for `bids_qsm --lesion-dir`.
The truth of each finding is in the phantom's own labels (`derivatives/phantom/*_dseg.nii.gz`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

# label: (name, chi ppm vs water, R2* 1/s at 3 T, proton density). Lesions: demyelinated white
# matter loses its diamagnetic myelin (chi above NAWM's -0.03 ppm) and its T2* grows; a chronic
# active lesion's rim holds iron-laden microglia (+0.05 to +0.1 ppm above NAWM in vivo).
LESION_TISSUES = {
    9010: ("Lesion-Core", 0.0, 14.0, 0.80),
    9011: ("Lesion-Rim", 0.07, 26.0, 0.74),
    9012: ("Lesion-Rimless", 0.0, 14.0, 0.80),
}
RIM_MM = 2.0  # thickness of the planted rim shell

# (centre mm, radius mm) in the head frame: all in deep white matter, clear of the nuclei
RIM_LESION = ((26.0, -10.0, 32.0), 7.0)
RIMLESS_LESION = ((-26.0, -8.0, 32.0), 7.0)
EXTRA_BLEEDS = [((32.0, -40.0, 22.0), 2.0), ((-20.0, 30.0, 30.0), 3.0)]
EXTRA_CALCIFICATIONS = [((12.0, -50.0, 36.0), 2.0)]


def lesion_structures():
    """Painting list entries [(label, Shape, None)] of the planted findings, painted last.

    The rim lesion is a ball of `Lesion-Rim` with a `Lesion-Core` ball `RIM_MM` smaller inside;
    microbleeds (9007) and calcifications (9006) are balls of the phantom's own tissues.
    """
    from bids_qsm.phantom import ellipsoid

    (centre, radius), (other, other_radius) = RIM_LESION, RIMLESS_LESION

    def ball(c, r):
        return ellipsoid(c, (r, r, r))

    return [
        (9011, ball(centre, radius), None),
        (9010, ball(centre, radius - RIM_MM), None),
        (9012, ball(other, other_radius), None),
        *[(9007, ball(c, r), None) for c, r in EXTRA_BLEEDS],
        *[(9006, ball(c, r), None) for c, r in EXTRA_CALCIFICATIONS],
    ]


LESION_NAMES = {1: "lesion-1", 2: "lesion-2"}


def lesion_labels(labels):
    """The lesion segmentation a FLAIR would give: 1 the rim lesion (core and rim), 2 the rimless
    one, 0 elsewhere (int16), from the phantom's tissue labels on the acquired grid."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int16)
    out[np.isin(labels, (9010, 9011))] = 1
    out[labels == 9012] = 2
    return out


def write_lesion_dir(bids_dir, out_dir=None):
    """Write `derivatives/lesions` (or `out_dir`): one `*_desc-lesion_dseg.nii.gz` per run of the
    phantom dataset at `bids_dir`, made from its truth labels, with `dseg.tsv`. Returns the
    folder."""
    bids_dir = Path(bids_dir)
    truth = bids_dir / "derivatives" / "phantom"
    out_dir = Path(out_dir) if out_dir is not None else bids_dir / "derivatives" / "lesions"
    for dseg in sorted(truth.rglob("sub-*_dseg.nii.gz")):
        image = nib.load(dseg)
        lesions = lesion_labels(np.asarray(image.dataobj))
        target = out_dir / dseg.parent.relative_to(truth)
        target.mkdir(parents=True, exist_ok=True)
        name = dseg.name.replace("_dseg.nii.gz", "_desc-lesion_dseg.nii.gz")
        out = nib.Nifti1Image(lesions, image.affine)
        out.set_sform(image.affine, code=1)
        out.set_qform(image.affine, code=1)
        nib.save(out, target / name)
    about = {
        "Name": "bids_qsm head phantom lesion masks",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_qsm-phantom"}],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(json.dumps(about, indent=2) + "\n")
    (out_dir / "desc-lesion_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in LESION_NAMES.items())
    )
    return out_dir
