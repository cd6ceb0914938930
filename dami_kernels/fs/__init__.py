"""Filesystem safety for what the library writes: atomic output directories (`outdir`)."""
