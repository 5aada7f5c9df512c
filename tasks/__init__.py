"""One module per pipeline stage: pure functions first, the thin Prefect @task wrapper last."""
