"""Package data: derivative path patterns and citations."""

import json
from functools import cache
from importlib.resources import files


@cache
def load_json(name):
    """A JSON file shipped in this folder."""
    return json.loads(files(__name__).joinpath(name).read_text())
