"""The stage chain and its stages: arrays in, arrays out; no sockets, no files."""
