"""Time buckets: where a moment falls when points are merged into steps of whole seconds.

A merged point is dated by the earliest report it holds, not by its bucket's start: readers
select points by time (a rollout's window starts when its wave did), and a bucket whose
reports all came after a moment then still counts as after it; only a bucket that straddles
the moment moves, whole, to before it. Charts put it in the same step either way, as their
steps are whole buckets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(moment: datetime, bucket_s: int) -> datetime:
    """The start of the `bucket_s`-second bucket holding `moment`, counted from the epoch."""
    if bucket_s < 1:
        raise ValueError(f"bucket_s must be at least 1, not {bucket_s}")
    offset = (moment - _EPOCH) // timedelta(seconds=bucket_s)
    return _EPOCH + timedelta(seconds=offset * bucket_s)
