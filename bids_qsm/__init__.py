"""bids_qsm: quantitative susceptibility mapping as a BIDS App."""

from importlib.metadata import PackageNotFoundError, version

from bids_qsm._environment import set_environment_defaults

set_environment_defaults()

try:
    __version__ = version("bids_qsm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
