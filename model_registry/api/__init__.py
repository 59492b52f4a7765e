"""The registry's REST API (aiohttp): thin handlers over the services."""
