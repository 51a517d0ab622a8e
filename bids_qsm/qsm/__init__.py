"""The numerical library: numpy arrays in, arrays out; no nipype, no files, no settings."""
