"""Data staging: sources (HTTP, S3, a cluster file), destinations (a cluster file, S3), the pipeline.

Depends on nothing else in ``hpc`` but its own modules: api -> services -> {schedulers, staging, ssh,
store}. The cluster is reached through the :class:`~hpc.staging.sftp.RemoteHost` interface, which the
service layer implements over its SSH connections.
"""
