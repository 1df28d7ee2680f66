"""Fixtures of the live transfer tests (nginx and S3 data, a fresh cluster directory), shared by the modules
of this directory: defined once here, so a session-wide bucket is made once."""

from tests.staging_live import cluster_dir, s3, www

__all__ = ["cluster_dir", "s3", "www"]
