"""The stage framework: registry, planning, driver, per-shard context, reuse and Prefect tasks."""
