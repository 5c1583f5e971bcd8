"""Vectorized SID trie: hand-checked masks and transitions, hypothesis properties, Beauty at scale."""
import json
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.sid import SidError, SidIndex
from indexing.trie import CLOSED, INVALID, SidTrie, TrieMasker

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
NEG = float("-inf")

# Three levels, token ids chosen by hand; 2 is EOS, 3 is </answer>.
SIDS = [[10, 20, 30], [10, 20, 31], [10, 21, 30], [11, 22, 32]]
V = 40


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=devices())
def trie(request):
    return SidTrie.build(SIDS, V, end_token_ids=[2, 3], device=request.param)


def allowed_sets(trie, states):
    mask = trie.allowed_mask(states).cpu()
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


def test_masks_by_hand(trie):
    dev = trie.device
    prefixes = torch.tensor([[10, 20, 0], [10, 0, 0], [11, 22, 32], [10, 21, 30], [12, 0, 0], [0, 0, 0]], device=dev)
    lengths = torch.tensor([2, 1, 3, 3, 1, 0], device=dev)
    states = trie.states_for_prefixes(prefixes, lengths)
    assert states[4].item() == INVALID
    assert allowed_sets(trie, states) == [{30, 31}, {20, 21}, {2, 3}, {2, 3}, {2, 3}, {10, 11}]
    assert trie.depth == 3 and trie.num_sids == 4
    # 1 root + 2 + 3 + 4 nodes
    assert trie.num_nodes == 10


def test_children_counts_and_the_only_child_by_hand(trie):
    dev = trie.device
    prefixes = torch.tensor([[0, 0], [10, 0], [10, 20], [10, 21], [11, 22], [11, 22], [12, 0]], device=dev)
    states = trie.states_for_prefixes(prefixes, torch.tensor([0, 1, 2, 2, 2, 0, 1], device=dev))
    states[5] = trie.states_for_prefixes(torch.tensor([[11, 22, 32]], device=dev))[0]  # a leaf
    assert trie.num_children(states).tolist() == [2, 2, 2, 1, 1, 0, 0]  # root, <10>, <10,20>, <10,21>, <11,22>, leaf, invalid
    first = trie.first_child(states).tolist()
    assert first[:5] == [10, 20, 30, 30, 32]


def test_advance_close_and_invalid(trie):
    dev = trie.device
    s = trie.states_for_prefixes(torch.tensor([[10, 20, 31]], device=dev))
    assert trie.is_leaf(s).item()
    assert trie.sid_of_leaf(s).item() == 1
    assert trie.advance(s, torch.tensor([3], device=dev)).item() == CLOSED
    assert trie.advance(s, torch.tensor([10], device=dev)).item() == INVALID
    root = trie.root(3)
    nxt = trie.advance(root, torch.tensor([11, 20, 2], device=dev))
    assert nxt[0].item() >= 0 and nxt[1].item() == INVALID and nxt[2].item() == INVALID
    # Out-of-vocabulary ids never alias into another node's transitions.
    assert trie.advance(trie.root(1), torch.tensor([V + 10], device=dev)).item() == INVALID
    assert trie.advance(torch.tensor([CLOSED], device=dev), torch.tensor([2], device=dev)).item() == INVALID


def test_apply_and_topk_by_hand(trie):
    dev = trie.device
    logits = torch.arange(2 * V, dtype=torch.float32, device=dev).reshape(2, V) / 10
    states = trie.states_for_prefixes(torch.tensor([[0, 0], [10, 20]], device=dev), torch.tensor([0, 2], device=dev))
    out = trie.apply(logits, states)
    expected = torch.full((2, V), NEG)
    expected[0, [10, 11]] = torch.tensor([1.0, 1.1])
    expected[1, [30, 31]] = torch.tensor([7.0, 7.1])
    torch.testing.assert_close(out.cpu(), expected)
    assert torch.isfinite(logits).all()  # not in place by default
    vals, ids = trie.topk(logits, states, 3)
    assert ids[:, :2].tolist() == [[11, 10], [31, 30]]
    torch.testing.assert_close(vals[:, :2].cpu(), torch.tensor([[1.1, 1.0], [7.1, 7.0]]))
    assert torch.isinf(vals[:, 2]).all()
    same = trie.apply(logits, states, inplace=True)
    assert same.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(logits.cpu(), expected)


def test_empty_batch(trie):
    empty = trie.root(0)
    assert trie.allowed_mask(empty).shape == (0, V)
    assert trie.apply(torch.zeros(0, V, device=trie.device), empty).shape == (0, V)


def test_contains(trie):
    assert trie.contains([11, 22, 32])
    assert not trie.contains([11, 22, 30])
    assert not trie.contains([10, 20])
    assert not trie.contains([10, 20, 30, 2])
    batch = torch.tensor(SIDS + [[11, 20, 30]], device=trie.device)
    assert trie.contains_batch(batch).tolist() == [True] * 4 + [False]


def test_build_rejects_bad_input():
    with pytest.raises(SidError, match="ids in"):
        SidTrie.build(SIDS, V, end_token_ids=[V])
    with pytest.raises(SidError, match="also occur inside SIDs"):
        SidTrie.build(SIDS, V, end_token_ids=[30])
    with pytest.raises(SidError, match=r"lie in \[0, 25\)"):
        SidTrie.build(SIDS, 25, end_token_ids=[2])
    with pytest.raises(SidError, match="non-empty"):
        SidTrie.build([], V, end_token_ids=[2])


def test_from_index_maps_tokens_and_leaves():
    idx = SidIndex({5: (0, 1), 7: (1, 0), 9: (0, 0)})
    vocab = {tok: 100 + i for i, tok in enumerate(idx.vocab())}
    trie = SidTrie.from_index(idx, vocab, vocab_size=200, end_token_ids=[0])
    seq = [vocab[t] for t in idx.tokens(7)]
    state = trie.states_for_prefixes(torch.tensor([seq]))
    assert idx.items()[trie.sid_of_leaf(state).item()] == 7
    with pytest.raises(SidError, match="not in the tokenizer vocabulary"):
        SidTrie.from_index(idx, {}, vocab_size=200, end_token_ids=[0])


def test_masker_reuses_buffers_without_stale_entries(trie):
    dev = trie.device
    masker = TrieMasker(trie, max_batch=4)
    batches = [
        (torch.tensor([[0, 0, 0], [0, 0, 0]]), torch.tensor([0, 0])),                       # root, 2 rows
        (torch.tensor([[10, 20, 0], [10, 21, 0], [11, 22, 32], [9, 0, 0]]), torch.tensor([2, 2, 3, 1])),
        (torch.tensor([[10, 0, 0]]), torch.tensor([1])),                                     # batch shrinks
    ]
    gen = torch.Generator().manual_seed(0)
    for prefixes, lengths in batches:
        states = trie.states_for_prefixes(prefixes.to(dev), lengths.to(dev))
        logits = torch.randn(len(lengths), V, generator=gen).to(dev)
        assert torch.equal(masker.mask(states), trie.allowed_mask(states))
        torch.testing.assert_close(masker.apply(logits, states), trie.apply(logits, states))
    with pytest.raises(ValueError, match="max_batch=4"):
        masker.mask(trie.root(5))


# ---------------------------------------------------------------- properties
def sid_sets():
    """Random SID tables: depth 1-4, arbitrary (not level-disjoint) token ids in [4, 30)."""
    return st.integers(1, 4).flatmap(lambda d: st.lists(
        st.lists(st.integers(4, 29), min_size=d, max_size=d).map(tuple), min_size=1, max_size=40, unique=True))


def enumerate_paths(trie):
    """Every token path the trie allows from the root, expanded breadth first with its own masks."""
    paths, states = [()], trie.root(1)
    for _ in range(trie.depth):
        mask = trie.allowed_mask(states)
        rows, toks = torch.nonzero(mask, as_tuple=True)
        paths = [paths[r] + (t,) for r, t in zip(rows.tolist(), toks.tolist())]
        states = trie.advance(states[rows], toks)
        assert (states >= 0).all()
    return paths, states


@settings(max_examples=60, deadline=None)
@given(sid_sets())
def test_allowed_paths_are_exactly_the_sids(sids):
    trie = SidTrie.build([list(s) for s in sids], 32, end_token_ids=[1, 2])
    paths, leaves = enumerate_paths(trie)
    # Every allowed path ends in a real SID, and every SID is reachable, each exactly once.
    assert sorted(paths) == sorted(sids)
    assert trie.is_leaf(leaves).all()
    after = trie.allowed_mask(leaves)
    assert after[:, [1, 2]].all() and after.sum(1).eq(2).all()
    assert sorted(trie.sid_of_leaf(leaves).tolist()) == list(range(len(sids)))


@settings(max_examples=60, deadline=None)
@given(sid_sets(), st.data())
def test_random_non_sid_is_rejected(sids, data):
    depth = len(sids[0])
    trie = SidTrie.build([list(s) for s in sids], 32, end_token_ids=[1])
    probe = data.draw(st.lists(st.integers(0, 31), min_size=depth, max_size=depth).map(tuple).filter(lambda p: p not in sids))
    assert not trie.contains(list(probe))
    # The walk dies exactly at the first position where no SID shares the prefix.
    state = trie.states_for_prefixes(torch.tensor([probe]))
    assert state.item() == INVALID
    first_bad = next(t for t in range(1, depth + 1) if not any(s[:t] == probe[:t] for s in sids))
    if first_bad > 1:
        ok = trie.states_for_prefixes(torch.tensor([probe[: first_bad - 1]]))
        assert ok.item() >= 0 and not trie.allowed_mask(ok)[0, probe[first_bad - 1]]


@settings(max_examples=40, deadline=None)
@given(sid_sets(), st.data())
def test_batch_mask_matches_per_row_lookup(sids, data):
    depth = len(sids[0])
    trie = SidTrie.build([list(s) for s in sids], 32, end_token_ids=[3])
    prefixes = data.draw(st.lists(st.sampled_from(sids).flatmap(
        lambda s: st.integers(0, depth).map(lambda n: s[:n])), min_size=1, max_size=16))
    table = torch.zeros(len(prefixes), depth, dtype=torch.long)
    for r, p in enumerate(prefixes):
        table[r, : len(p)] = torch.tensor(p, dtype=torch.long)
    states = trie.states_for_prefixes(table, torch.tensor([len(p) for p in prefixes]))
    got = allowed_sets(trie, states)
    for p, allowed in zip(prefixes, got):
        want = {s[len(p)] for s in sids if s[: len(p)] == p} if len(p) < depth else {3}
        assert allowed == want


# ---------------------------------------------------------------- real data at scale
def test_beauty_letter_trie_builds_fast():
    path = SHARED / "beauty" / "Beauty.letter.index.json"
    if not path.exists():
        pytest.skip(f"{path} absent (the shared datasets live beside the repo in CI)")
    raw = json.loads(path.read_text())
    vocab = {f"<{lvl}_{c}>": 1000 + 256 * i + c for i, lvl in enumerate("abcd") for c in range(256)}
    rows = [[vocab[t] for t in raw[k]] for k in raw]
    # CPU time, not wall time: the shared CI box may be busy with other suites (typically 0.1-0.3 s).
    start = time.process_time()
    trie = SidTrie.build(rows, vocab_size=1000 + 4 * 256, end_token_ids=[0])
    seconds = time.process_time() - start
    assert seconds < 2.0, f"Beauty trie took {seconds:.2f} s of CPU"
    assert trie.num_sids == len({tuple(r) for r in rows}) == 12088  # 13 LETTER duplicates collapse
    assert trie.contains_batch(torch.tensor(rows)).all()
    batch = torch.tensor(rows[:1024])
    for t in range(4):
        states = trie.states_for_prefixes(batch[:, :t])
        assert trie.allowed_mask(states)[torch.arange(1024), batch[:, t]].all()
