"""What the agent tells the registry: `reporting` sends the retained state, the events and the
telemetry (`telemetry` collects it); `spool` keeps each event and report on disk until the
registry acknowledges it, and `outbox` holds in memory what a full disk refused."""
