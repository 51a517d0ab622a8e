"""Workflow factories: they wire nodes; no numerics here."""
