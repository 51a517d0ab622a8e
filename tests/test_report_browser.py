"""The report as a web page: opened in headless Chromium, every figure must load and show.

Chromium comes from Debian's `chromium` package, which `scripts/install_test_tools.sh` installs
(as root) when it is missing; the tests skip, saying why, only when it still is not available.

How "every figure loads" is checked without scripts (the page has none, and a headless
screenshot cannot tell a broken image from a blank one by itself):

1. The report itself is rendered: its screenshot must not be blank, and must differ clearly from
   the screenshot of the same page whose figure files were deleted, so the figures are what
   fills it. `--dump-dom` shows that Chromium parsed every section and every <img>.
2. Each image URL exactly as the report writes it (read from the report's HTML) is shown on a
   probe page in the report's folder, so relative URLs resolve the same way, one tile each at
   the figure's own aspect ratio over a magenta background. A figure that decodes covers its
   tile with its white, drawn page; one that fails leaves the tile magenta, which a control
   tile pointing at a missing file demonstrates in the same screenshot.
Every Chromium call has a fresh profile and a 60 s timeout.
"""

import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bids_qsm.qsm.swi import minimum_intensity_projection, swi
from bids_qsm.reports.figures import plot_chimap, plot_map, plot_mask_outline, plot_swi
from bids_qsm.reports.html import write_report

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
TILE_WIDTH = 400


@pytest.fixture(scope="session")
def chromium():
    """Path of the chromium binary, installed by the project's script when missing."""
    found = shutil.which("chromium")
    if found is None:
        script = REPO / "scripts" / "install_test_tools.sh"
        run = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False
        )
        found = shutil.which("chromium")
        if found is None:
            tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
            pytest.skip(f"chromium is not available and {script.name} could not install it: {tail}")
    return found


class _Chromium:
    def __init__(self, binary, workdir):
        self.binary, self.workdir, self.calls = binary, workdir, 0

    def run(self, url, *arguments, size=(1280, 2000)):
        self.calls += 1
        profile = self.workdir / f"profile-{self.calls}"
        command = [
            self.binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            *arguments,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def screenshot(self, page, size=(1280, 2000)):
        png = self.workdir / f"shot-{self.calls + 1}.png"
        self.run(page.as_uri(), f"--screenshot={png}", size=size)
        with Image.open(png) as image:
            return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    return _Chromium(chromium, tmp_path_factory.mktemp("chromium"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A subject's report with all its figures, from a small synthetic brain."""
    out = tmp_path_factory.mktemp("out")
    folder = out / "sub-01" / "figures"
    shape, voxel, te = (40, 48, 24), (1.0, 1.0, 2.0), np.array([0.005, 0.015, 0.025])
    x, y, z = np.meshgrid(
        *[(np.arange(n) - n / 2 + 0.5) * h for n, h in zip(shape, voxel, strict=True)],
        indexing="ij",
    )
    mask = (x / 17) ** 2 + (y / 21) ** 2 + (z / 20) ** 2 < 1
    chi = np.where((x - 5) ** 2 + y**2 + z**2 < 16, 0.3, 0.0) * mask
    chi -= np.where((x + 5) ** 2 + y**2 + z**2 < 16, 0.2, 0.0)
    field = (30 * chi + 5 * x / 20).astype(np.float32)
    r2star = np.where(mask, 20.0 + 40 * np.abs(chi), 0.0)
    magnitude = mask[..., None] * np.exp(-np.multiply.outer(r2star, te))
    image = swi(magnitude, field, mask, te=te, voxel_size=voxel)
    minip = minimum_intensity_projection(image, voxel_size=voxel, mask=mask)
    geometry = {"voxel_size": voxel, "mask": mask}
    made = [
        (
            "Magnitude and mask",
            plot_mask_outline(magnitude, mask, folder / "mask.svg", voxel_size=voxel),
        ),
        (
            "Total field",
            plot_map(field, folder / "field.svg", cmap="RdBu_r", symmetric=True, **geometry),
        ),
        ("Chimap", plot_chimap(chi, folder / "chimap.svg", **geometry)),
        ("R2*", plot_map(r2star, folder / "r2star.png", cmap="magma", **geometry)),
        ("SWI and minIP", plot_swi(image, minip, folder / "swi.svg", **geometry)),
    ]
    return write_report(
        out / "sub-01.html",
        subject="01",
        figures=[(title, f.path.relative_to(out), f"{title} of sub-01") for title, f in made],
        methods="Susceptibility was estimated with TGV [1].\n\n- [1] Langkammer C, 2015.",
        parameters={"inversion": {"method": "tgv"}},
        timings={"invert": 12.5},
        warnings=["phase was rescaled"],
    )


class _Sources(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.images, self.ids = [], set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "id" in attrs:
            self.ids.add(attrs["id"])


def _aspect(path):
    """Height over width of a figure file, as the browser will lay it out."""
    if path.suffix == ".svg":
        root = ET.parse(path).getroot()
        return float(root.get("height").removesuffix("pt")) / float(
            root.get("width").removesuffix("pt")
        )
    with Image.open(path) as png:
        return png.height / png.width


def _magenta(pixels):
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (r > 200) & (g < 60) & (b > 200)


def test_report_renders_and_its_figures_fill_it(browser, report, tmp_path):
    dom = _Sources(browser.run(report.as_uri(), "--dump-dom"))
    assert {"summary", "warnings", "figures", "methods", "parameters", "timings"} <= dom.ids
    assert len(dom.images) == 5

    shot = browser.screenshot(report)
    gray = shot.mean(axis=2)
    assert gray.std() > 20, "the screenshot is (nearly) uniform"
    assert (gray < 200).mean() > 0.05, "the screenshot is (nearly) all white"

    bare = tmp_path / "bare"
    shutil.copytree(report.parent, bare)
    shutil.rmtree(bare / "sub-01" / "figures")
    without = browser.screenshot(bare / report.name)
    changed = np.abs(shot - without).max(axis=2) > 30
    assert changed.mean() > 0.10, f"only {changed.mean():.1%} of the page comes from figures"


def test_every_figure_url_of_the_report_loads(browser, report):
    sources = _Sources(report.read_text(encoding="utf-8")).images
    tiles, top = [], 0
    for src in [*sources, "sub-01/figures/does-not-exist.svg"]:
        file = report.parent / src
        height = round(TILE_WIDTH * (_aspect(file) if file.exists() else 0.5))
        tiles.append((src, top, height))
        top += height + 20
    cells = "".join(
        f'<div style="position:absolute;left:0;top:{t}px;width:{TILE_WIDTH}px;height:{h}px;'
        f'background:#ff00ff"><img src="{src}" style="display:block;width:100%;height:100%">'
        "</div>"
        for src, t, h in tiles
    )
    probe = report.parent / "probe.html"
    probe.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{cells}</body></html>")
    shot = browser.screenshot(probe, size=(TILE_WIDTH + 100, top + 100))
    for src, t, h in tiles:
        tile = shot[t + 2 : t + h - 2, 2 : TILE_WIDTH - 2]
        magenta = _magenta(tile).mean()
        if "does-not-exist" in src:
            assert magenta > 0.5, "a missing image must leave its tile magenta"
        else:
            assert magenta < 0.01, f"{src} did not load ({magenta:.1%} of its tile uncovered)"
            assert tile.mean(axis=2).std() > 20, f"{src} shows nothing"
