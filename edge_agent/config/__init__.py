"""The device's configuration: the settings (`settings`), reading and checking device.toml
(`loader`), and the checks of every file and address it names before the agent starts
(`preflight`)."""
