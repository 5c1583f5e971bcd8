"""An RL job on a real three-node Ray cluster on this machine, for test_multinode.py.

Run as `python -m tests.rl_system.multinode_job OUT POLICY_DIR`: it starts its own cluster
(ray.cluster_utils.Cluster: a head and two worker raylets) so it cannot disturb the test session's
Ray, pins the learner, the rollout worker and the reward replica to one node each through custom
resources (cluster.*.resources), and once the job has finished step `KILL_AFTER` it adds a node that
can hold a rollout worker and removes the node holding the current one. OUT/result.json records what
the test checks.
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
STEPS = 4
NODES = {"learner_node": {"num_cpus": 3}, "rollout_node": {"num_cpus": 2}, "reward_node": {"num_cpus": 1}}


def _kill_rollout_node(cluster, node, status: Path, result: dict) -> None:
    while not status.exists() or json.loads(status.read_text())["step"] < KILL_AFTER:
        time.sleep(0.2)
    import ray

    result["held_before_kill"] = {k: ray.available_resources().get(k, 0.0) for k in NODES}
    cluster.add_node(num_cpus=2, resources={"rollout_node": 1})
    cluster.remove_node(node)
    result["killed_after_step"] = json.loads(status.read_text())["step"]


def main(out: Path, policy_dir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODES["learner_node"], "resources": {"learner_node": 1},
                                                            "include_dashboard": False})
    # SIGTERM (the test's timeout) unwinds through `finally`, so no raylet outlives the job.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        nodes = {name: cluster.add_node(**args, resources={name: 1}) for name, args in NODES.items()
                 if name != "learner_node"}
        ray.init(address=cluster.address, log_to_driver=False)
        _run(cluster, nodes, out, policy_dir)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(cluster, nodes: dict, out: Path, policy_dir: Path) -> None:
    import ray

    from cluster.metrics_log import read_metrics
    from indexing.build import index_path
    from indexing.importer import import_index
    from rl_system import train
    from tests.rl_fixtures import REPO, rl_test_spec

    spec = rl_test_spec(out / "run", steps=STEPS)
    for role, marker in (("learner", "learner_node"), ("rollout", "rollout_node"), ("reward", "reward_node")):
        getattr(spec.cluster, role).resources = {marker: 1}
    spec.cluster.rollout.num_workers = 1
    import_index(REPO / "data/office/Office.unitok5.index.json").index.save(index_path(spec))
    shutil.copytree(policy_dir, spec.layout.model("sft"))

    result: dict = {"nodes": len(ray.nodes())}
    killer = threading.Thread(target=_kill_rollout_node, args=(cluster, nodes["rollout_node"], spec.layout.status, result),
                              daemon=True)
    killer.start()
    train.run(spec)
    killer.join(timeout=60)
    result["steps"] = [row["step"] for row in read_metrics(spec.layout.metrics("rl"))]
    result["weight_versions"] = [row["weight_version"] for row in read_metrics(spec.layout.metrics("rl"))]
    result["status"] = json.loads(spec.layout.status.read_text())
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
