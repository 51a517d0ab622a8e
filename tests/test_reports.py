"""Report figures and the HTML page, built from small synthetic maps with anisotropic voxels."""

import base64
import io
import logging
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from bids_qsm.qsm.swi import minimum_intensity_projection, swi
from bids_qsm.reports.figures import (
    plot_chimap,
    plot_map,
    plot_mask_outline,
    plot_swi,
)
from bids_qsm.reports.html import write_report

SHAPE = (40, 48, 24)
VOXEL = (1.0, 1.0, 2.0)
TE = np.array([0.005, 0.015, 0.025])
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"


@pytest.fixture(scope="module")
def maps():
    """An ellipsoidal brain with a bright (paramagnetic) and a dark (diamagnetic) blob."""
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(
        *[(np.arange(n) - n / 2 + 0.5) * h for n, h in zip(SHAPE, VOXEL, strict=True)],
        indexing="ij",
    )
    mask = (x / 17) ** 2 + (y / 21) ** 2 + (z / 20) ** 2 < 1
    chi = np.where(mask, 0.02 * rng.standard_normal(SHAPE), 0).astype(np.float32)
    chi[(x - 5) ** 2 + y**2 + z**2 < 16] = 0.3
    chi[(x + 5) ** 2 + y**2 + z**2 < 16] = -0.2
    chi *= mask
    field = (30 * chi + 5 * x / 20).astype(np.float32)
    magnitude = np.exp(-np.multiply.outer(np.where(mask, 20.0, 5.0), TE)).astype(np.float32)
    magnitude *= 1 + 0.05 * rng.standard_normal(magnitude.shape).astype(np.float32)
    image = swi(magnitude, field, mask, te=TE, voxel_size=VOXEL)
    minip = minimum_intensity_projection(image, voxel_size=VOXEL, mask=mask)
    return {
        "mask": mask,
        "chi": chi,
        "field": field,
        "magnitude": magnitude,
        "swi": image,
        "minip": minip,
    }


@pytest.fixture(scope="module")
def figures(maps, tmp_path_factory):
    """Every figure of a subject's report, written where the report expects them."""
    out = tmp_path_factory.mktemp("out")
    folder = out / "sub-01" / "figures"
    m = maps
    written = {
        "mask": plot_mask_outline(m["magnitude"], m["mask"], folder / "mask.svg", voxel_size=VOXEL),
        "field": plot_map(
            m["field"],
            folder / "field.svg",
            voxel_size=VOXEL,
            mask=m["mask"],
            cmap="RdBu_r",
            label="field (Hz)",
            symmetric=True,
        ),
        "r2star": plot_map(
            20 * m["mask"],
            folder / "r2star.svg",
            voxel_size=VOXEL,
            mask=m["mask"],
            label="R2* (1/s)",
        ),
        "chimap": plot_chimap(m["chi"], folder / "chimap.svg", voxel_size=VOXEL, mask=m["mask"]),
        "swi": plot_swi(m["swi"], m["minip"], folder / "swi.svg", voxel_size=VOXEL, mask=m["mask"]),
        "swi_png": plot_swi(m["swi"], m["minip"], folder / "swi.png", voxel_size=VOXEL),
    }
    return out, written


def _tick_labels(svg_path):
    """The texts matplotlib drew as paths; it keeps each one as an XML comment."""
    return re.findall(r"<!-- (.*?) -->", svg_path.read_text(encoding="utf-8"))


def _embedded_images(svg_path):
    """(pixel width, pixel height, displayed width, displayed height) of each embedded raster."""
    out = []
    for node in ET.parse(svg_path).getroot().iter(f"{SVG}image"):
        href = node.get(f"{XLINK}href")
        assert href.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))) as png:
            png.load()
        width, height = float(node.get("width")), float(node.get("height"))
        scale = re.match(r"matrix\(([-\d.e]+) 0 0 ([-\d.e]+)", node.get("transform", ""))
        sx, sy = (abs(float(v)) for v in scale.groups()) if scale else (1.0, 1.0)
        out.append((png.width, png.height, width * sx, height * sy))
    return out


def test_every_figure_is_a_small_valid_image(figures):
    _, written = figures
    for name, figure in written.items():
        assert figure.path.is_file(), name
        assert figure.path.stat().st_size < 1_000_000, name
        if figure.path.suffix == ".svg":
            assert ET.parse(figure.path).getroot().tag == f"{SVG}svg"
            assert _embedded_images(figure.path), name
        else:
            with Image.open(figure.path) as png:
                assert png.format == "PNG" and np.asarray(png.convert("L")).std() > 10


def test_chimap_colour_bar_is_symmetric_at_the_99th_percentile(maps, figures):
    _, written = figures
    limit = np.percentile(np.abs(maps["chi"][maps["mask"]]), 99)
    chimap = written["chimap"]
    assert chimap.vmin == pytest.approx(-limit) and chimap.vmax == pytest.approx(limit)
    labels = _tick_labels(chimap.path)
    assert f"{-limit:.3g}" in labels and f"{limit:.3g}" in labels and "0" in labels
    assert "χ (ppm)" in labels


def test_chimap_takes_a_given_limit(maps, tmp_path):
    figure = plot_chimap(
        maps["chi"], tmp_path / "chi.svg", voxel_size=VOXEL, mask=maps["mask"], limit_ppm=0.25
    )
    assert (figure.vmin, figure.vmax) == (-0.25, 0.25)
    assert {"-0.25", "0", "0.25"} <= set(_tick_labels(figure.path))


def test_map_limits(maps, figures):
    _, written = figures
    field = maps["field"][maps["mask"]]
    assert written["field"].vmax == pytest.approx(np.percentile(np.abs(field), 99))
    assert written["field"].vmin == -written["field"].vmax
    assert "field (Hz)" in _tick_labels(written["field"].path)
    assert written["mask"].vmin is None
    assert written["swi"].vmin == 0 and written["swi"].vmax > 0


def test_views_keep_the_physical_aspect_of_anisotropic_voxels(figures):
    """Sagittal (Y, Z), coronal (X, Z), axial (X, Y): 2 mm along Z doubles the height per voxel."""
    _, written = figures
    views = _embedded_images(written["chimap"].path)[:3]  # then the colour bar
    for (pixels_w, pixels_h, shown_w, shown_h), vertical_mm in zip(views, (2, 2, 1), strict=True):
        assert shown_w / shown_h == pytest.approx(pixels_w / (pixels_h * vertical_mm), rel=0.02)


def test_figures_are_reproducible(maps, tmp_path):
    first = plot_chimap(maps["chi"], tmp_path / "a.svg", voxel_size=VOXEL, mask=maps["mask"])
    second = plot_chimap(maps["chi"], tmp_path / "b.svg", voxel_size=VOXEL, mask=maps["mask"])
    assert first.path.read_bytes() == second.path.read_bytes()


class _Page(HTMLParser):
    """Ids, links, image sources and texts of an HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.tags, self.text = set(), [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.text.append(data)


def _report(built, **overrides):
    out, written = built
    arguments = {
        "subject": "01",
        "figures": [
            (f"{name} <view>", f.path.relative_to(out), f"caption of {name} & more")
            for name, f in written.items()
        ],
        "methods": "Fields were combined [1] & inverted [2].\n\nReferences\n\n"
        "- [1] Eckstein K. 2018.\n- [2] Langkammer C. 2015.",
        "parameters": {"inversion": {"method": "tgv", "alphas": (0.0015, 0.0005)}, "b0": 3.0},
        "timings": {"combine": 1.5, "invert": 125.0},
        "warnings": ["phase rescaled <from> arbitrary units"],
        "errors": ["ROI statistics failed: no segmentation"],
    }
    arguments.update(overrides)
    path = write_report(out / "sub-01.html", **arguments)
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return path, text, page


def test_report_has_every_section_and_a_working_table_of_contents(figures):
    path, _, page = _report(figures)
    assert path.name == "sub-01.html"
    sections = {"summary", "errors", "warnings", "figures", "methods", "parameters", "timings"}
    assert sections <= page.ids
    targets = {link[1:] for link in page.links if link.startswith("#")}
    assert sections | {f"figure-{i}" for i in range(6)} <= targets <= page.ids


def test_report_images_resolve_relative_to_the_page(figures):
    path, _, page = _report(figures)
    assert len(page.images) == 6
    for src in page.images:
        assert not src.startswith(("/", "file:", "http")) and src.startswith("sub-01/figures/")
        assert (path.parent / unquote(src)).is_file()


def test_report_is_self_contained(figures):
    _, text, page = _report(figures)
    assert "script" not in page.tags and "link" not in page.tags
    for forbidden in ("http://", "https://", "@import", "@font-face", "url("):
        assert forbidden not in text


def test_report_escapes_and_shows_messages_parameters_and_timings(figures):
    _, text, page = _report(figures)
    assert "phase rescaled &lt;from&gt; arbitrary units" in text
    assert "<from>" not in text and "<view>" not in text
    shown = " ".join(page.text)
    assert "phase rescaled <from> arbitrary units" in shown
    assert "ROI statistics failed: no segmentation" in shown
    assert "[2] Langkammer C. 2015." in shown and "caption of chimap & more" in shown
    assert "0.0015, 0.0005" in shown and "tgv" in shown
    assert "2 min 05 s" in shown and "2 min 06 s" in shown  # invert, and the total


def test_report_without_messages(figures):
    _, text, _ = _report(figures, warnings=[], errors=())
    assert "No warnings." in text and "No errors." in text


def test_report_rejects_absolute_figure_paths_and_warns_on_missing_ones(figures, caplog):
    out, _ = figures
    with pytest.raises(ValueError, match="relative"):
        _report(figures, figures=[("x", out / "sub-01" / "figures" / "mask.svg", "")])
    with caplog.at_level(logging.WARNING):
        _report(figures, figures=[("x", Path("sub-01/figures/missing.svg"), "")])
    assert "missing.svg" in caplog.text
