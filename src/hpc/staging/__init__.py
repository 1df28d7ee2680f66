"""Data staging: sources, sinks, and the plumbing that joins them. Pure of SSH and of the store.

- sources: :mod:`~hpc.staging.http` (HTTP(S) URLs), :mod:`~hpc.staging.s3` (objects, and the S3 client),
  :mod:`~hpc.staging.cluster_source` (a file on the cluster); their interface is :mod:`~hpc.staging.sources`;
- sinks: :mod:`~hpc.staging.to_cluster` (a file on the cluster, verified there as it arrives) and
  :mod:`~hpc.staging.to_s3` (an S3 object, multipart); :mod:`~hpc.staging.batch` moves many files at once;
- plumbing: :mod:`~hpc.staging.fetch` (source -> spool, hashed), :mod:`~hpc.staging.spool` (the local
  buffer and its quota), :mod:`~hpc.staging.retry` (the retry policy), :mod:`~hpc.staging.control`
  (cancellation), :mod:`~hpc.staging.report` (progress to the service through a callback),
  :mod:`~hpc.staging.cluster` (the cluster's faults classified, paths confined).

The cluster is reached only through the :class:`hpc.transport.ClusterFiles` interface, which the service
layer gets from :mod:`hpc.ssh`: api -> services -> {schedulers, staging, ssh, store}.
"""
