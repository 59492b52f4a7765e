"""The operator's dashboard at `/ui/` (docs/dashboard.md): static pages, sign-in, live updates.

The pages are plain JavaScript modules in `static/`, shipped in the wheel and served by
`model-registry serve` itself; they read the same REST API as the CLI.
"""
