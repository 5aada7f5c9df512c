"""MapCap: explain why CLIP classifies images the way it does, at dataset scale, queryable with SQL.

The installed package maps the repository's top-level folders under this one name (pyproject.toml,
`[tool.setuptools.package-dir]`): `flows/` is `mapcap.flows`, `tasks/` is `mapcap.tasks`, `storage/` is
`mapcap.storage`, `toy/` is `mapcap.toy`. Nothing else lands in site-packages.
"""
import os

# Threads waiting for work sleep instead of spinning. Spinning OpenMP threads (torch's) take the cores from the
# decode threads and from every other process, the flow's Prefect server included: the 1,000-image toy run took
# 46 s in the flow with the default policy and 31-37 s with this one on 2 cores (README, Benchmarks). It takes
# effect when mapcap is imported before torch (every entry point does); set the variable yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
