"""The live dashboard: :mod:`~rtdecode.dashboard.view` (what is shown), :mod:`~rtdecode.dashboard.server`."""
