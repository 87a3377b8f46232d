"""The processes: live decoder session, subscriber, recorder, replay, report, demo, dashboard."""
