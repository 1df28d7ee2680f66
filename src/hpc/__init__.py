"""hpc-gateway: a REST gateway between cloud orchestrators and HPC clusters reachable over SSH."""

__version__ = "1.0.0"
