"""Fleet statistics: the numbers rollouts, drift, experiments and the dashboard decide on.

One home, so that each feature is a small policy on top and the dashboard and `/metrics` show
the same numbers the decisions used (docs/registry.md, "Fleet statistics"):

* `points`: each telemetry report's numbers per (model, version), extracted at ingest and
  stored with the report (`storage.VersionPoint`);
* `counts`: merging the count fields devices send (predicted classes, bins, outcomes);
* `window`: windows of points per model, version and device, and time series for charts;
* `distributions`: population stability index and the largest CDF gap;
* `proportions`: intervals, the two-proportion z-test and sample sizes, for comparing versions;
* `resources`: each report's resource use per device (`storage.ResourcePoint`), for charts;
* `buckets`: the time buckets the history duty merges points into (docs/dashboard.md).

Pure but for `window`'s readers, which take the storage they read.
"""
