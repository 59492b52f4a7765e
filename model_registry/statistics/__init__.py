"""Fleet statistics: what rollouts, drift, experiments and the dashboard read from telemetry."""
