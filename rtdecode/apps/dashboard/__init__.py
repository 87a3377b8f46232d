"""The live dashboard.

:mod:`~rtdecode.apps.dashboard.view` computes what is shown; :mod:`~rtdecode.apps.dashboard.server`
serves the page, the WebSocket and the subscriber thread.
"""
