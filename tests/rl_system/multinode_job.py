"""An RL job on a real four-node Ray cluster on this machine, for test_multinode.py.

Run as `python -m tests.rl_system.multinode_job OUT POLICY_DIR`: it starts its own cluster
(ray.cluster_utils.Cluster: a head and three worker raylets) so it cannot disturb the test session's
Ray. Custom resources (cluster.*.resources) pin the learner to the head, the reward replica to a
node of its own and the rollout worker to one of two rollout nodes; once the job has finished step
`KILL_AFTER`, the node holding the rollout worker is removed. OUT/result.json records what the test
checks.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

KILL_AFTER = 2
STEPS = 5
HEAD = {"num_cpus": 3, "resources": {"learner_node": 1}}
WORKERS = [{"num_cpus": 2, "resources": {"rollout_node": 1}}, {"num_cpus": 2, "resources": {"rollout_node": 1}},
           {"num_cpus": 1, "resources": {"reward_node": 1}}]
MARKERS = ("learner_node", "rollout_node", "reward_node")


def _rollout_node(cluster):
    """The raylet holding the rollout worker's placement group."""
    import ray

    groups = [g for g in ray.util.placement_group_table().values() if "rollout" in g["name"] and g["state"] == "CREATED"]
    node_id = groups[0]["bundles_to_node_id"][0]
    return next(n for n in cluster.list_all_nodes() if n.node_id == node_id)


def _kill_rollout_node(cluster, status: Path, result: dict) -> None:
    import ray

    try:
        while not status.exists() or json.loads(status.read_text())["step"] < KILL_AFTER:
            time.sleep(0.1)
        result["free_before_kill"] = {k: ray.available_resources().get(k, 0.0) for k in MARKERS}
        cluster.remove_node(_rollout_node(cluster))
        result["killed_after_step"] = json.loads(status.read_text())["step"]
    except Exception as exc:  # a thread's exception would vanish; the test shows it instead
        result["killer_error"] = repr(exc)


def main(out: Path, policy_dir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**HEAD, "include_dashboard": False})
    # SIGTERM (the test's timeout) unwinds through `finally`, so no raylet outlives the job.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for node in WORKERS:
            cluster.add_node(**node)
        ray.init(address=cluster.address, log_to_driver=False)
        _run(cluster, out, policy_dir)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(cluster, out: Path, policy_dir: Path) -> None:
    import ray

    from cluster.metrics_log import read_metrics
    from indexing.build import index_path
    from indexing.importer import import_index
    from rl_system import train
    from tests.rl_fixtures import REPO, rl_test_spec

    spec = rl_test_spec(out / "run", steps=STEPS)
    for role, marker in zip(("learner", "rollout", "reward"), MARKERS):
        getattr(spec.cluster, role).resources = {marker: 1}
    spec.cluster.rollout.num_workers = 1
    import_index(REPO / "data/office/Office.unitok5.index.json").index.save(index_path(spec))
    shutil.copytree(policy_dir, spec.layout.model("sft"))

    result: dict = {"nodes": len(ray.nodes())}
    killer = threading.Thread(target=_kill_rollout_node, args=(cluster, spec.layout.status, result), daemon=True)
    killer.start()
    train.run(spec)
    killer.join(timeout=60)
    rows = read_metrics(spec.layout.metrics("rl"))
    result.update(steps=[r["step"] for r in rows], weight_versions=[r["weight_version"] for r in rows],
                  status=json.loads(spec.layout.status.read_text()))
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
