"""Scale-out: the explain flow on a local Ray (CPU) through prefect-ray gives the same results as on threads."""
import numpy as np

from mapcap.flows.explain import ExplainParams
from mapcap.flows.explain_ray import explain_on_ray
from mapcap.storage.query import connect, run_sql

QUERY = """SELECT image_id, template, pred, pred_prob FROM predictions ORDER BY image_id, template"""


def test_ray_task_runner_matches_threads(prefect_harness, toy_dir, thread_run, tmp_path):
    common = dict(dataset=str(toy_dir), shard_size=16, device="cpu", stages=["classify", "relevancy"],
                  relevancy_methods=["chefer"])
    ray_out = str(tmp_path / "ray")
    flow = explain_on_ray(num_cpus=2)
    assert type(flow.task_runner).__name__ == "RayTaskRunner"
    result = flow(ExplainParams(out=ray_out, run_name="r", **common))
    assert result["n_images"] == 48 and result["shards_done"] == 3
    on_ray, on_threads = connect(ray_out), connect(thread_run)
    a, b = run_sql(on_ray, QUERY).to_pylist(), run_sql(on_threads, QUERY).to_pylist()
    assert [(r["image_id"], r["template"], r["pred"]) for r in a] == [(r["image_id"], r["template"], r["pred"]) for r in b]
    # Ray workers run torch with their own thread count: the same numbers up to float summation order
    assert np.allclose([r["pred_prob"] for r in a], [r["pred_prob"] for r in b], atol=1e-4)
    maps = "SELECT image_id, target, map FROM relevancy ORDER BY image_id, target"
    ma, mb = run_sql(on_ray, maps).to_pylist(), run_sql(on_threads, maps).to_pylist()
    assert len(ma) == len(mb) == 48 * 2
    assert np.allclose([r["map"] for r in ma], [r["map"] for r in mb], rtol=1e-3, atol=1e-5)
