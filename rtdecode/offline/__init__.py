"""Training, cross-validation and evaluation over recorded sessions."""
