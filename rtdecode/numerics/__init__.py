"""Numerical kernels and statistics shared by pipeline, models and offline code; imports nothing of theirs."""
