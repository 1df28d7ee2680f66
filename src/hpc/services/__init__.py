"""Orchestration: infrastructures, jobs and transfers, over the store, SSH, schedulers and staging."""
