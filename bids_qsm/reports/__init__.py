"""The per-subject visual report: figures (matplotlib, SVG) and a self-contained HTML page."""
