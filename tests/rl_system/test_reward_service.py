"""Real Ray actors serving real ZMQ sockets."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import zmq

from cluster.placement import Unplaceable
from rl_system.reward import wire
from rl_system.reward.client import RewardClient, RewardServiceError, RewardTimeout, RewardUnauthorized
from rl_system.reward.pool import RewardPool
from rl_system.reward.scoring import RewardScorer
from rl_system.reward.server import start_replicas
from tests.reward_fixtures import REPO, TOKEN, index_path  # noqa: F401


@pytest.fixture(scope="module")
def service(index_path, ray_cluster):  # noqa: F811
    actors, endpoints = start_replicas(index_path, replicas=2, token=TOKEN)
    yield actors, endpoints
    ray.get([a.stop.remote() for a in actors])
    for actor in actors:
        ray.kill(actor)


def test_in_process_scorer_uses_semantic_levels(index_path):  # noqa: F811
    scorer = RewardScorer.from_file(index_path)
    assert scorer.semantic_levels == 2 and scorer.depth == 3
    _, out = scorer.score(["<a_1><b_2><c_1>", "<a_1><b_2><c_0>", "<a_1><b_3><c_0>"], [0, 0, 0])
    np.testing.assert_allclose(out.residual, [0.95, 1.0, np.sqrt(0.5)])


def test_binds_loopback_and_scores_across_replicas(service):
    actors, endpoints = service
    assert all(ep.startswith("tcp://127.0.0.1:") for ep in endpoints) and len(set(endpoints)) == 2
    completions = ["<a_1><b_2><c_0>", "<a_1><b_2><c_1>", "<a_1><b_9><c_0>", "nonsense"] * 2
    with RewardClient(endpoints, token=TOKEN, timeout_s=10, min_chunk=2) as client:
        before = ray.get([a.stats.remote() for a in actors])
        reply = client.score(completions, [0] * 8)
        after = ray.get([a.stats.remote() for a in actors])
    assert reply.format_ok.tolist() == [True, True, True, False] * 2
    assert reply.exact.tolist() == [True, False, False, False] * 2
    assert reply.lcp.tolist() == [3, 2, 1, 0] * 2
    np.testing.assert_allclose(reply.residual, [1.0, 0.95, np.sqrt(0.5), 0.0] * 2)
    assert reply.binary.tolist() == [1.0, 0.0, 0.0, 0.0] * 2
    assert reply.item.tolist() == [0, 1, -1, -1] * 2
    assert reply.codes[3].tolist() == [-1, -1, -1]
    assert reply.beam is None
    # The batch was split: each replica scored half of it.
    assert [a["completions"] - b["completions"] for a, b in zip(after, before)] == [4, 4]


def test_reasoning_mode_and_beam_reward(service):
    _, endpoints = service
    completions = ["<think>pens</think><answer><a_1><b_3><c_0></answer>", "<answer><a_1><b_2><c_0></answer>"]
    beams = [["<a_1><b_3><c_0>", "<a_1><b_2><c_0>"], ["<a_1><b_2><c_0>", "<a_1><b_2><c_0>"]]
    with RewardClient(endpoints, token=TOKEN, timeout_s=10) as client:
        reply = client.score(completions, [0, 0], beams=beams, mode="reasoning")
    assert reply.format_ok.tolist() == [True, False]
    np.testing.assert_allclose(reply.residual, [np.sqrt(0.5), 0.0])
    np.testing.assert_allclose(reply.beam, [1.0, 0.0])


def test_malformed_requests_get_errors_and_service_survives(service):
    _, endpoints = service
    with RewardClient(endpoints[:1], token=TOKEN, timeout_s=10) as client:
        bad = client.send_raw(0, [wire.pack_request(5, TOKEN, {})[0], b"\xc1 definitely not msgpack"])
        assert bad["id"] == 5 and bad["code"] == "bad frame" and "not valid msgpack" in bad["error"]
        missing = client.send_raw(0, wire.pack_request(7, TOKEN, {"completions": ["x"]}))
        assert missing["id"] == 7 and "'targets' must be a list" in missing["error"]
        not_a_map = client.send_raw(0, wire.pack_request(8, TOKEN, [1, 2, 3]))
        assert not_a_map["code"] == "bad request"
        one_frame = client.send_raw(0, [b"\x81\xa1a\x01"])  # the single msgpack frame of the old format
        assert one_frame["code"] == "bad frame" and "expected 2 frames" in one_frame["error"]
        with pytest.raises(RewardServiceError, match=r"item ids \[99\] have no SID"):
            client.score(["<a_1><b_2><c_0>"], [99])
        with pytest.raises(RewardServiceError, match="2 completions but 1 targets"):
            client.score(["a", "b"], [0])
        with pytest.raises(RewardServiceError, match="same number of candidates"):
            client.score(["a", "b"], [0, 0], beams=[["<a_1><b_2><c_0>"], []])
        assert client.score(["<a_1><b_2><c_0>"], [0]).exact.tolist() == [True]


def test_wrong_or_missing_token_is_rejected(service):
    actors, endpoints = service
    rejected_before = ray.get(actors[0].stats.remote())["rejected"]
    for token in ("wrong", None):
        with RewardClient(endpoints[:1], token=token, timeout_s=10) as client:
            with pytest.raises(RewardUnauthorized, match="bad token"):
                client.score(["<a_1><b_2><c_0>"], [0])
    assert ray.get(actors[0].stats.remote())["rejected"] == rejected_before + 2


def test_client_times_out_with_a_clear_error():
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)  # accepts the request, never answers
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with RewardClient([f"tcp://127.0.0.1:{port}"], timeout_s=0.3) as client:
            with pytest.raises(RewardTimeout, match=f"127.0.0.1:{port} within 0.3s"):
                client.score(["<a_1>"], [0])
    finally:
        silent.close(linger=0)


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "hung"])
def test_lost_replica_is_replaced_and_the_batch_scored(index_path, ray_cluster, fault):  # noqa: F811
    pool = RewardPool(index_path, replicas=2, token=TOKEN, timeout_s=3)
    pid = ray.get(pool.actors[0].pid.remote())
    try:
        # A signal, not ray.kill: a crash takes the process and its socket away; a stopped process
        # keeps both, connected and silent, as a replica stuck in a loop or a lock would.
        os.kill(pid, fault)
        completions = ["<a_1><b_2><c_0>", "<a_4><b_2><c_0>"] * 300  # large enough to reach both replicas
        reply = pool.score(completions, [0, 0] * 300)
        assert pool.replaced == 1
        assert reply.exact.tolist() == [True, False] * 300
        assert pool.client.ping() == [True, True]
    finally:
        pool.shutdown()
        try:  # a stopped process left behind by a failed test would never exit
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_replicas_that_cannot_start_are_refused_as_unplaceable(index_path, ray_cluster):  # noqa: F811
    start = time.monotonic()
    with pytest.raises(Unplaceable, match=r"1 reward replica\(s\) needing \{'no_such_node': 1.0\} did not start "
                                          r"within 2s \(cluster.reward.start_timeout_s\); the cluster has "):
        start_replicas(index_path, 1, token=TOKEN, resources={"no_such_node": 1.0}, start_timeout_s=2)
    assert time.monotonic() - start < 30


# A head node, a pool on it (loopback), then a second node joins and the replica hangs.
_GROWING_CLUSTER = """
import json, os, signal, sys
import ray
from ray.cluster_utils import Cluster
from cluster.spec import JobSpec
from rl_system.reward.pool import RewardPool

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    ray.init(address=cluster.address, log_to_driver=False)
    spec = JobSpec(name="grow", run_dir=sys.argv[2], cluster={"reward": {"timeout_s": 3}})
    pool = RewardPool.from_spec(spec, sys.argv[1])
    first = pool.endpoints[0]
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    os.kill(ray.get(pool.actors[0].pid.remote()), signal.SIGSTOP)
    reply = pool.score(["<a_1><b_2><c_0>"], [0])
    print(json.dumps({"first": first, "second": pool.endpoints[0], "replaced": pool.replaced,
                      "exact": reply.exact.tolist(), "node": ray.util.get_node_ip_address()}))
    pool.shutdown()
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.heavy  # a Ray cluster of its own, in a child process
def test_replacement_binds_for_the_cluster_it_starts_in(index_path, tmp_path):  # noqa: F811
    """cluster.reward.host "auto" is resolved at each (re)start: a replica replaced after a second node
    joined binds its node's address, which that node's workers reach, not the loopback it began on."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", _GROWING_CLUSTER, str(index_path), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first"].startswith("tcp://127.0.0.1:") and result["replaced"] == 1 and result["exact"] == [True]
    assert result["second"].startswith(f"tcp://{result['node']}:") and result["node"] != "127.0.0.1"
