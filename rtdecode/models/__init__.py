"""Decoder bundles, candidate banks, latent maps and classifiers: model files in and out."""
