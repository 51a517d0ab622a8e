"""Thin Nipype interfaces: load NIfTI, call one function of `bids_qsm.qsm`, save NIfTI."""
