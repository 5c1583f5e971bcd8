"""A reward request scored against the SID index: parse the completions, look up items, apply the reward functions."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from indexing.segments import Popularity
from indexing.sid import SidIndex
from rl_system.reward import functions as rewards
from rl_system.reward.objectives import item_tables, popularity_fields


class RequestError(ValueError):
    """A request the service cannot serve; its message goes back to the client."""




class RewardScorer:
    """The in-process scorer the service wraps: item ids -> target codes, completions -> rewards."""

    def __init__(self, index: SidIndex, mode: rewards.Mode = "direct", beta: float = 0.5,
                 semantic_levels: int | None = None, teacher=None, popularity: Popularity | None = None):
        """`teacher`: a rl_system.reward.teacher.Teacher; requests then carry `histories`.
        `popularity`: the items' training interactions; replies then carry popularity_fields."""
        self.index = index
        self.teacher = teacher
        self.popularity = None if popularity is None else item_tables(popularity)
        self.mode = mode
        self.beta = beta
        items = np.array(index.items(), dtype=np.int64)
        codes = index.as_array()
        self.depth = index.depth
        self.semantic_levels = semantic_levels if semantic_levels is not None else rewards.semantic_levels(codes)
        # Dense item -> codes table (-1 rows for ids the index lacks) so targets resolve in one take().
        self._target_table = np.full((int(items.max()) + 1, self.depth), -1, dtype=np.int64)
        self._target_table[items] = codes
        # Generated SID -> item by binary search over the index rows viewed as fixed-size byte keys.
        keys = _row_keys(codes)
        order = np.argsort(keys)
        self._sorted_keys = keys[order]
        self._sorted_items = items[order]

    @classmethod
    def from_file(cls, index_path: str | Path, **kwargs) -> "RewardScorer":
        return cls(SidIndex.load(index_path), **kwargs)

    def target_codes(self, targets: Sequence[int]) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim != 1:
            raise RequestError(f"'targets' must be a flat list of item ids, got shape {targets.shape}")
        known = (targets >= 0) & (targets < len(self._target_table))
        codes = np.full((len(targets), self.depth), -1, dtype=np.int64)
        codes[known] = self._target_table[targets[known]]
        missing = (codes[:, 0] < 0)
        if missing.any():
            bad = targets[missing][:5].tolist()
            raise RequestError(f"'targets': item ids {bad} have no SID in the index ({self.index.num_items} items)")
        return codes

    def score(self, completions: Sequence[str], targets: Sequence[int], beams: Sequence[Sequence[str]] | None = None,
              mode: rewards.Mode | None = None) -> tuple[rewards.ParsedBatch, rewards.RewardBatch]:
        if len(completions) != len(targets):
            raise RequestError(f"{len(completions)} completions but {len(targets)} targets; need one target each")
        parsed = rewards.parse_completions(completions, mode or self.mode, self.depth)
        beam_codes = None
        if beams is not None:
            widths = {len(b) for b in beams}
            if len(beams) != len(completions) or len(widths) != 1:
                raise RequestError(f"'beams' must hold the same number of candidates for each of the "
                                   f"{len(completions)} completions, got {len(beams)} lists of widths {sorted(widths)}")
            width = widths.pop()
            flat = rewards.parse_sids([s for cands in beams for s in cands], self.depth)
            beam_codes = flat.codes.reshape(len(completions), width, self.depth)
        result = rewards.score(parsed, self.target_codes(targets), self.semantic_levels, self.beta, beam_codes)
        return parsed, result

    def items_of(self, codes: np.ndarray) -> np.ndarray:
        """The item each code row [N, D] names, -1 for malformed (-1 rows) or unknown SIDs."""
        queries = _row_keys(codes)
        pos = np.searchsorted(self._sorted_keys, queries).clip(max=len(self._sorted_keys) - 1)
        return np.where(self._sorted_keys[pos] == queries, self._sorted_items[pos], -1)

    def handle(self, request: Any) -> dict[str, Any]:
        """Serve one decoded request map; raises RequestError for anything malformed."""
        if not isinstance(request, dict):
            raise RequestError(f"a request must be a msgpack map, got {type(request).__name__}")
        for key, kind in (("completions", list), ("targets", list)):
            if not isinstance(request.get(key), kind):
                raise RequestError(f"request key '{key}' must be a list, got {type(request.get(key)).__name__}")
        if not all(isinstance(c, str) for c in request["completions"]):
            raise RequestError("request key 'completions' must be a list of strings")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in request["targets"]):
            raise RequestError("request key 'targets' must be a list of integer item ids")
        mode = request.get("mode")
        if mode not in (None, "direct", "reasoning"):
            raise RequestError(f"request key 'mode' must be 'direct' or 'reasoning', got {mode!r}")
        beams = request.get("beams")
        if beams is not None and not (isinstance(beams, list) and all(
                isinstance(b, list) and all(isinstance(s, str) for s in b) for b in beams)):
            raise RequestError("request key 'beams' must be a list of lists of SID strings")
        histories = request.get("histories")
        if self.teacher is not None and not (
                isinstance(histories, list) and len(histories) == len(request["completions"]) and all(
                    isinstance(h, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in h)
                    for h in histories)):
            raise RequestError("this replica scores with a teacher: request key 'histories' must hold one list of "
                               "item ids per completion")
        parsed, out = self.score(request["completions"], request["targets"], beams, mode)
        items = self.items_of(parsed.codes)
        reply = {"ok": True, "format_ok": out.format_ok.tolist(), "codes": parsed.codes.tolist(),
                 "item": items.tolist(), "exact": out.exact.tolist(), "lcp": out.lcp.tolist(),
                 "residual": out.residual.tolist(), "binary": out.binary.tolist(),
                 "beam": None if out.beam is None else out.beam.tolist()}
        if self.teacher is not None:
            logp, rank, target_logp = self.teacher.score_with_targets(histories, items, np.asarray(request["targets"]))
            reply.update(teacher_logp=logp.tolist(), teacher_rank=rank.tolist(), teacher_target_logp=target_logp.tolist())
        if self.popularity is not None:
            reply.update({k: v.tolist() for k, v in popularity_fields(self.popularity, items).items()})
        return reply


def _row_keys(codes: np.ndarray) -> np.ndarray:
    """Each int64 row as one opaque fixed-size value, so rows sort and compare as scalars."""
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    return codes.view(np.dtype((np.void, 8 * codes.shape[1]))).ravel()
