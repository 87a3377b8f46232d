"""Files of a session: NIfTI series and masks, the HDF5 recording, checkpoints."""
