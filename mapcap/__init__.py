"""MapCap: explain why CLIP classifies images the way it does, at dataset scale, queryable with SQL.

The installed package maps the repository's top-level folders under this one name (pyproject.toml,
`[tool.setuptools.package-dir]`): `flows/` is `mapcap.flows`, `tasks/` is `mapcap.tasks`, `storage/` is
`mapcap.storage`, `toy/` is `mapcap.toy`. Nothing else lands in site-packages.
"""
