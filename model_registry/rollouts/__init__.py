"""Staged rollouts: a release reaches a group wave by wave and halts itself (docs/registry.md).

`policy` what a rollout is told, `waves` which devices each wave moves, `gates` and `health`
when it halts, `changes` the stored steps it goes through, `controller` the duty that drives
them, `service` what the API, the CLI and other features call.
"""
