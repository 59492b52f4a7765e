"""The update path: from a signed assignment to a committed model.

`dispatch` routes what the broker delivers; `updater` runs one update per model through its
steps: `acquire` verifies the release and fetches the artifact (`fetch` over MQTT, `http_fetch`
over HTTP), `activation` loads, warms up and self-tests it and swaps it in, and `probation`
judges it against the version it replaced (`observations`). It never imports the HTTP server:
the two meet only in the model repository and the metrics.
"""
