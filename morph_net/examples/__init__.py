"""Embedded example models and data (no download at run time)."""
