"""Group level gathers the read-out tables (foci, lesions, veins) like the region tables."""

import csv
import json

from bids_qsm.group import run_group
from bids_qsm.interfaces.readouts import FOCI_COLUMNS, LESION_COLUMNS, write_table


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_foci_and_lesion_tables_of_every_run_are_gathered_in_long_format(tmp_path):
    runs = {"sub-01/ses-1/anat/sub-01_ses-1": 2, "sub-01/ses-2/anat/sub-01_ses-2": 0,
            "sub-02/anat/sub-02_run-3": 1}  # fmt: skip
    for prefix, n_foci in runs.items():
        (tmp_path / prefix).parent.mkdir(parents=True, exist_ok=True)
        foci = [{"id": i + 1, "class": "paramagnetic", "x_mm": 1.5 * i, "lesion": None}
                for i in range(n_foci)]  # fmt: skip
        write_table(tmp_path / f"{prefix}_desc-foci_Chimap.tsv", FOCI_COLUMNS, foci)
    lesion = {"index": 1, "name": "lesion-1", "rim": True, "judged": True}
    write_table(tmp_path / "sub-02/anat/sub-02_run-3_desc-lesions_Chimap.tsv", LESION_COLUMNS,
                [lesion])  # fmt: skip

    result = run_group(tmp_path)
    foci = read(result.readouts["foci"])
    assert [(r["participant_id"], r["session_id"], r["run"], r["id"]) for r in foci] == [
        ("sub-01", "ses-1", "n/a", "1"), ("sub-01", "ses-1", "n/a", "2"),
        ("sub-02", "n/a", "3", "1"),
    ]  # fmt: skip
    assert foci[1]["x_mm"] == "1.5" and foci[0]["lesion"] == "n/a"
    assert list(foci[0])[:5] == ["participant_id", "session_id", "acq", "run", "id"]
    meta = json.loads(result.readouts["foci"].with_suffix(".json").read_text())
    assert meta["x_mm"]["Units"] == "mm"
    (row,) = read(result.readouts["lesions"])
    assert (row["participant_id"], row["rim"], row["name"]) == ("sub-02", "true", "lesion-1")
    assert "veins" not in result.readouts
