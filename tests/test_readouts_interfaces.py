"""The read-out interfaces on files: tables, links between foci and lesions, the CSF reference,
figures, and a lesion file that misses the brain."""

import csv
import json

import nibabel as nb
import numpy as np
import pytest
from readout_scenes import AFFINE, make_scene

from bids_qsm.interfaces.readouts import Foci, Lesions, ReadoutFigures, Veins
from bids_qsm.segmentation import SegmentationError


def _run(interface, cwd):
    cwd.mkdir()
    return interface.run(cwd=str(cwd)).outputs


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readout_files")
    scene = make_scene()
    i, j, k = np.indices(scene.mask.shape)
    centre = np.linalg.solve(AFFINE[:3, :3], np.array([30.0, 10, 20]) - AFFINE[:3, 3])
    tumour = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= 16
    lesions = np.where(tumour, 5, scene.lesions).astype(np.int16)  # a bleed inside lesion 5
    csf = np.zeros(scene.mask.shape, np.int16)
    csf[28:36, 28:36, 20:28] = 24  # a CSF-labelled block of white matter: chi about -0.03
    paths = {}
    for name, data in (("chi", scene.chi), ("mask", scene.mask.astype(np.uint8)),
                       ("magnitude", scene.magnitude), ("lesions", lesions), ("labels", csf),
                       ("swi", scene.magnitude)):  # fmt: skip
        paths[name] = root / f"{name}.nii.gz"
        nb.Nifti1Image(data, AFFINE).to_filename(paths[name])
    return root, {k: str(v) for k, v in paths.items()}


def test_foci_and_lesions_list_each_other(files):
    root, p = files
    names = {1: "rim", 2: "rimless", 3: "tiny", 5: "tumour"}
    foci = _run(Foci(chimap=p["chi"], mask=p["mask"], magnitude=p["magnitude"],
                     lesions=p["lesions"], lesion_names=names), root / "foci")  # fmt: skip
    rows = _rows(foci.table)
    inside = [r for r in rows if r["lesion"] != "n/a"]
    assert [r["lesion"] for r in inside] == ["5"] and inside[0]["class"] == "paramagnetic"
    assert np.linalg.norm([float(inside[0][c]) for c in ("x_mm", "y_mm", "z_mm")]
                          - np.array([30.0, 10, 20])) < 4  # fmt: skip
    assert foci.meta["x_mm"]["Units"] == "mm" and "FociSearch" in foci.meta
    lesions = _run(Lesions(chimap=p["chi"], mask=p["mask"], lesions=p["lesions"], names=names,
                           lesion_file="lesions.nii.gz", foci=foci.dseg,
                           foci_table=foci.table), root / "lesions")  # fmt: skip
    table = {r["name"]: r for r in _rows(lesions.table)}
    assert table["tumour"]["foci"] == inside[0]["id"] and table["rim"]["foci"] == "n/a"
    assert table["rim"]["rim"] == "true" and table["rimless"]["rim"] == "false"
    assert table["tiny"]["judged"] == "false" and table["tiny"]["rim"] == "n/a"
    assert lesions.rims[1] is True and json.loads(json.dumps(lesions.meta))["RimRule"]


def test_veins_with_a_csf_reference_from_the_labels(files):
    root, p = files
    veins = _run(Veins(chimap=p["chi"], mask=p["mask"], labels=p["labels"],
                       reference_labels=[24], hct=0.42), root / "veins")  # fmt: skip
    (row,) = _rows(veins.table)
    assert row["reference"] == "CSF"
    assert float(row["reference_ppm"]) == pytest.approx(-0.03, abs=0.02)
    assert row["hct"] == "0.42" and row["measured_on"] == "wide veins"
    y = 1 - float(row["dchi_ppm"]) / (0.42 * 3.43) - 0.10 / 3.43
    assert float(row["Y"]) == pytest.approx(y, abs=1e-4)
    figures = _run(ReadoutFigures(chimap=p["chi"], mask=p["mask"], swi=p["swi"],
                                  veins=veins.mask_file, lesions=p["lesions"]),
                   root / "figures")  # fmt: skip
    assert figures.keys == ["findings", "veins"]
    assert all(open(f).read(5) == "<?xml" for f in figures.out_files)


def test_lesions_outside_the_brain_name_the_file(files):
    root, p = files
    outside = np.zeros(nb.load(p["mask"]).shape, np.int16)
    outside[:3, :3, :3] = 1
    path = root / "outside.nii.gz"
    nb.Nifti1Image(outside, AFFINE).to_filename(path)
    with pytest.raises(SegmentationError, match="another subject") as err:
        Lesions(chimap=p["chi"], mask=p["mask"], lesions=str(path), lesion_file="user/les.nii.gz",
                )._run_interface(type("R", (), {"cwd": str(root)})())  # fmt: skip
    assert str(err.value).startswith("user/les.nii.gz: only 0%")
