"""The reward service's wire format against real servers on real ZMQ sockets: the token is checked
before a body is unpacked, malformed frames are answered, an oversized one drops its connection
unread, a flood queues one message, an off-loopback replica needs a token, and 10,000+ bad frames
leave a server process answering valid requests correctly."""
import random
import time

import msgpack
import numpy as np
import pytest
import zmq

from cluster.spec import SpecError
from rl_system.reward import wire
from rl_system.reward.client import RewardClient, RewardRequestTooLarge, RewardUnauthorized
from rl_system.reward.server import RewardServer, serving_socket, start_replicas
from tests.reward_fixtures import COMPLETIONS, LCP, RESIDUAL, TOKEN, index_path, server_process  # noqa: F401

MAX = 4096
NOT_MSGPACK = b"\xc1"  # the one byte msgpack never uses


@pytest.fixture(scope="module")
def server(index_path):  # noqa: F811
    srv = RewardServer(str(index_path), token=TOKEN, max_request_bytes=MAX)
    yield srv
    srv.stop()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("*", False), ("10.0.0.5", False), ("eth0", False)])
def test_is_loopback(host, loopback):
    assert wire.is_loopback(host) is loopback


def test_header_is_magic_id_and_token():
    assert wire.pack_request(258, "ab", {}) == [b"GRW1" + bytes(6) + b"\x01\x02ab", b"\x80"]
    assert wire.pack_request(1, None, {})[0] == b"GRW1" + bytes(7) + b"\x01"


def test_token_is_checked_before_the_body():
    wrong, _ = wire.pack_request(7, "wrong", {})
    right, _ = wire.pack_request(7, TOKEN, {})
    with pytest.raises(wire.FrameError, match="^bad token: .*cluster.reward.token") as err:
        wire.check_request([wrong, NOT_MSGPACK], TOKEN.encode())
    assert err.value.request_id == 7
    with pytest.raises(wire.FrameError, match="^bad frame: the body is not valid msgpack"):
        wire.check_request([right, NOT_MSGPACK], TOKEN.encode())
    assert wire.check_request([wrong, b"\x81\xa1a\x01"], None) == (7, {"a": 1})  # a service without a token


@pytest.mark.parametrize("parts", [[b"GRW1" + bytes(8)], [b"GRW1" + bytes(8), b"\x80", b"\x80"], [b"GRW1", b"\x80"],
                                   [b"XXXX" + bytes(8), b"\x80"], [b"GRW1" + bytes(8 + wire.MAX_TOKEN_BYTES + 1), b"\x80"]])
def test_malformed_frames_are_bad_frames_without_an_id(parts):
    with pytest.raises(wire.FrameError, match="^bad frame: ") as err:
        wire.check_request(parts, None)
    assert err.value.request_id is None


def test_split_envelope_takes_a_req_delimiter():
    assert wire.split_envelope([b"id", b"h", b"b"]) == ([b"id"], [b"h", b"b"])
    assert wire.split_envelope([b"id", b"", b"h", b"b"]) == ([b"id", b""], [b"h", b"b"])
    assert wire.split_envelope([b"id"]) == ([b"id"], [])


def test_wrong_token_is_refused_without_reading_the_body(server):
    rejected = server.stats()["rejected"]
    with RewardClient([server.endpoint()], token="wrong", timeout_s=10) as client:
        reply = client.send_raw(0, [wire.pack_request(3, "wrong", {})[0], NOT_MSGPACK])
        assert reply["id"] == 3 and reply["code"] == "bad token" and not reply["ok"]
        with pytest.raises(RewardUnauthorized, match="bad token: .*cluster.reward.token"):
            client.score(COMPLETIONS[:1], [0])
    assert server.stats()["rejected"] == rejected + 2


def test_oversized_request_is_refused_before_it_is_sent(server):
    before = server.stats()
    with RewardClient([server.endpoint()], token=TOKEN, timeout_s=10, max_request_bytes=MAX) as client:
        with pytest.raises(RewardRequestTooLarge, match=f"300 completions packs into .* over the limit of {MAX} "
                                                        r"\(cluster.reward.max_request_mib\)"):
            client.score(COMPLETIONS[:1] * 300, [0] * 300)
        assert server.stats() == before  # nothing reached the replica
        assert client.score(COMPLETIONS[:1], [0]).exact.tolist() == [True]


def test_frame_over_the_limit_drops_its_connection_unread(server):
    """An unauthenticated peer's oversized frame is never buffered whole: ZMQ closes the connection
    at the frame's size header, so no reply comes, and the replica goes on serving others."""
    before = server.stats()
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(server.endpoint())
    try:
        peer.send_multipart([wire.pack_request(9, "wrong", {})[0], bytes(MAX + 1)])
        assert not peer.poll(1000), "an oversized frame was read and answered"
    finally:
        peer.close()
    assert server.stats() == before
    with RewardClient([server.endpoint()], token=TOKEN, timeout_s=10) as client:
        assert client.score(COMPLETIONS, [0] * 4).lcp.tolist() == LCP


def test_a_flooding_peer_queues_one_message_not_thousands():
    """While the serving loop is busy (here: never reads), a peer that keeps sending full-size
    frames is stopped by back-pressure once the replica holds RECEIVE_HWM of them: what it gets
    out of its own send queue then sits in the kernel's socket buffers (tens of MiB at most here,
    tcp_rmem), not in the replica's memory."""
    limit = 4 << 20
    ctx = zmq.Context.instance()
    replica = serving_socket(ctx, limit)
    port = replica.bind_to_random_port("tcp://127.0.0.1")
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 1)
    flood.connect(f"tcp://127.0.0.1:{port}")
    frames = [wire.pack_request(1, "wrong", {})[0], bytes(limit)]
    sent, stalled_since = 0, time.monotonic()
    try:
        while sent < 48 and time.monotonic() - stalled_since < 2:
            try:
                flood.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                time.sleep(0.02)
                continue
            sent, stalled_since = sent + 1, time.monotonic()
    finally:
        flood.close()
        replica.close()
    # 36 MiB of kernel buffers (tcp_rmem + tcp_wmem maxima here) hold 9 frames; a default high-water
    # mark (1,000 messages) would have taken all 48 (192 MiB) into the replica.
    assert sent <= 16, f"{sent} frames of {limit >> 20} MiB were taken while the replica read none"


def test_off_loopback_service_needs_a_token(index_path):  # noqa: F811
    for start in (lambda: RewardServer(str(index_path), host="0.0.0.0"),
                  lambda: start_replicas(index_path, 1, host="0.0.0.0")):
        with pytest.raises(SpecError, match="cluster.reward.token is required .*cluster.reward.host: '0.0.0.0'"):
            start()
    with pytest.raises(SpecError, match="cluster.reward.token is 1025 bytes in UTF-8; at most 1024 fit"):
        wire.check_token("127.0.0.1", "x" * 1025)
    wire.check_token("0.0.0.0", "x" * 1024)


def test_wildcard_bind_is_advertised_as_the_node_address(index_path):  # noqa: F811
    import ray

    server = RewardServer(str(index_path), host="0.0.0.0", token=TOKEN)
    try:
        assert server.endpoint().startswith(f"tcp://{ray.util.get_node_ip_address()}:")  # not tcp://0.0.0.0
        with RewardClient([server.endpoint()], token=TOKEN, timeout_s=10) as client:
            assert client.score(COMPLETIONS, [0] * 4).lcp.tolist() == LCP
    finally:
        server.stop()


def test_ping_tells_a_serving_replica_from_a_silent_one(server):
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # takes requests, never answers: a hung replica
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with RewardClient([server.endpoint(), f"tcp://127.0.0.1:{port}"], token=TOKEN, timeout_s=0.5) as client:
            assert client.ping() == [True, False]
    finally:
        silent.close(linger=0)


def bad_message(rng: random.Random, request_id: int) -> tuple[list[bytes], set[str], int | None]:
    """One malformed request: (frames, the codes it may be answered with, the reply's id)."""
    header, body = wire.pack_request(request_id, TOKEN, {"completions": COMPLETIONS, "targets": [0] * 4})
    kind = rng.randrange(7)
    if kind == 0:  # random frames, no header
        return [rng.randbytes(rng.randrange(1, 64)) for _ in range(rng.randrange(1, 5))], {wire.BAD_FRAME}, None
    if kind == 1:  # random bytes may even decode, into something that is not a request
        return [header, rng.randbytes(rng.randrange(200))], {wire.BAD_FRAME, wire.BAD_REQUEST}, request_id
    if kind == 2:
        return [header, body[:rng.randrange(len(body))]], {wire.BAD_FRAME}, request_id
    if kind == 3:
        token = rng.randbytes(rng.randrange(1, 40))
        junk = rng.choice([body, rng.randbytes(50), bytes(MAX)])
        return [header[:wire.HEADER_BYTES] + token, junk], {wire.BAD_TOKEN}, request_id
    if kind == 4:  # a body of the largest size the socket takes
        return [header, rng.randbytes(MAX)], {wire.BAD_FRAME, wire.BAD_REQUEST}, request_id
    if kind == 5:
        return [header[:rng.randrange(1, wire.HEADER_BYTES)], body], {wire.BAD_FRAME}, None
    return rng.choice([[header], [header, body, body], [header, body, b""]]), {wire.BAD_FRAME}, None


def exchange(sock: zmq.Socket, messages: list[list[bytes]]) -> list[dict]:
    """Send a window of messages, then read one reply each (a DEALER connection keeps their order)."""
    for frames in messages:
        sock.send_multipart(frames)
    replies = []
    for _ in messages:
        assert sock.poll(10_000), "a frame went unanswered"
        replies.append(msgpack.unpackb(sock.recv_multipart()[-1], raw=False))
    return replies


def test_fuzzed_frames_are_all_answered_and_valid_requests_still_scored(index_path):  # noqa: F811
    rng = random.Random(0)
    ctx = zmq.Context.instance()
    with server_process(index_path, MAX) as (proc, endpoint):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sent, start = 0, time.monotonic()
        for window in range(50):
            batch = [bad_message(rng, 1 + sent + i) for i in range(210)]
            valid_id = 1 << 40 | window  # one good request per window, among the bad ones
            batch.append((wire.pack_request(valid_id, TOKEN, {"completions": COMPLETIONS, "targets": [0] * 4}),
                          {None}, valid_id))
            rng.shuffle(batch)
            replies = exchange(sock, [frames for frames, _, _ in batch])
            for (frames, codes, request_id), reply in zip(batch, replies):
                assert reply["id"] == request_id and reply.get("code") in codes, (frames[:2], reply)
                if reply["ok"]:
                    assert reply["lcp"] == LCP and np.allclose(reply["residual"], RESIDUAL)
            sent += len(batch)
            if window % 10 == 0:  # a peer that leaves before its replies, and one over the frame limit
                for frames in ([b"GRW1"], [wire.pack_request(1, TOKEN, {})[0], bytes(MAX + 1)]):
                    gone = ctx.socket(zmq.DEALER)
                    gone.connect(endpoint)
                    gone.send_multipart(frames)
                    gone.close(linger=1000)
        sock.close()
        assert sent >= 10_000 and proc.poll() is None
        with RewardClient([endpoint], token=TOKEN, timeout_s=10) as client:
            for _ in range(20):
                reply = client.score(COMPLETIONS, [0] * 4)
                assert reply.lcp.tolist() == LCP and np.allclose(reply.residual, RESIDUAL)
        print(f"{sent} frames in {time.monotonic() - start:.1f}s")
