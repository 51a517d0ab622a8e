"""The table writer of benchmarks/validation_tables.py, on made-up scores (no pipeline run)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def tables():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(
            "validation_tables", BENCHMARKS / "validation_tables.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def _row(pair, **extra):
    scores = dict(nrmse=51.44, hfen=36.3, ssim=0.8601, slope=0.7749, r=0.859, coverage=0.925,
                  seconds=15.2, local_nrmse=58.04)  # fmt: skip
    return {"pair": pair, **scores, **extra}


def test_table_marks_the_default_and_keeps_columns(tables):
    rows = [
        _row(
            ("lbv", "tfi"),
            deep_gm_err=0.00761,
            Vein=(0.205, 0.345),
            Microbleed=(0.861, 0.881),
            Calcification=(-0.85, -0.839),
        ),
        _row(("pdf", "tkd")),  # a fixture without labels: blank cells
        {"pair": ("ismv", "tv"), "failed": "ismv eroded the | whole mask"},
    ]
    lines = tables.table(rows, ("lbv", "tfi")).splitlines()
    width = len(tables.COLUMNS)
    assert all(line.count("|") == width + 1 for line in lines)
    assert lines[2] == (
        "| **lbv** | **tfi** (default) | 51.4 | 36.3 | 0.860 | 0.775 | 0.859 | 0.925 | 58.0 "
        "| 0.0076 | +0.205 (+0.345) | +0.861 (+0.881) | -0.850 (-0.839) | 15 |"
    )
    assert lines[3].startswith("| pdf | tkd | 51.4 |")
    assert lines[3].endswith("| 58.0 |  |  |  |  | 15 |")
    assert "failed: ismv eroded the / whole mask" in lines[4]


def test_section_replaces_only_its_markers(tables, tmp_path):
    doc = tmp_path / "validation.md"
    doc.write_text("# Hand-written\n\nkept above\n")
    results = [("head", [_row(("lbv", "tfi"), pipeline_diff=0.0)], ("lbv", "tfi"), "38"),
               ("forward", None, None, "Skipped: qsm-forward is not importable here.")]  # fmt: skip
    first = tables.section(results, "| method |", 60.0, command="python x.py", version="abc1234")
    tables.write_section(doc, first)  # no markers yet: appended
    doc.write_text(doc.read_text() + "\nkept below\n")
    second = tables.section(
        results[:1], None, 120.0, command="python x.py --fixtures head", version="abc1234+0f0f0f0f"
    )
    tables.write_section(doc, second)
    text = doc.read_text()
    assert text.startswith("# Hand-written\n\nkept above\n")
    assert text.endswith(tables.END + "\n\nkept below\n")
    assert text.count(tables.BEGIN) == 1 and text.count(tables.END) == 1
    assert "--fixtures head" in text and "Skipped" not in text and "2016" not in text
    assert "The default pair's map is the pipeline's own (end to end in 38 s)." in text
    assert "Skipped: qsm-forward is not importable here." in first
    assert (
        "with bids_qsm/ at commit abc1234+0f0f0f0f (+: uncommitted changes under bids_qsm/)"
        in " ".join(text.split())
    )
