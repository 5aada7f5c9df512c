"""MapCap: explain why CLIP classifies images the way it does, at dataset scale, queryable with SQL.

The installed package maps the repository's top-level folders under this one name (pyproject.toml,
`[tool.setuptools.package-dir]`): `flows/` is `mapcap.flows`, `tasks/` is `mapcap.tasks`, `storage/` is
`mapcap.storage`, `toy/` is `mapcap.toy`. Nothing else lands in site-packages.
"""
import os

# Threads waiting for work sleep instead of spinning. A shard decodes images in threads (PIL) while torch's
# OpenMP threads run the model; spinning OpenMP threads took the cores from the decoders: classifying 4,000 toy
# images on 2 cores took 52 s with the default policy and 18 s with this one (bench/pipeline.py). It takes
# effect when mapcap is imported before torch (every entry point does); set the variable yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
