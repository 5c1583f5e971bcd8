"""Offline distillation from the run's SASRec (`sft.distill`): the teacher (a `gream baseline sasrec`
folder) gives every next-item SID target of a seqrec example its distribution p_T(item | the items
before it); sft/sid_losses.py marginalises it onto the trie and mixes it into the token loss.

Which targets: a seqrec example's answer (the teacher reads the whole history) and, with
`sft.history_loss`, each history SID (or item token, with `sft.history_input: item`) after the first
(the teacher reads the history before it, as the SFT model does). The first history item keeps its
one-hot target: SASRec never learnt to predict from an empty history. So do retrieved items
(`sft.retrieved_items`), which are no next item, and every other task's tokens.

The teacher runs on each batch, under no_grad, once per distinct history, rather than once for the
run: its forward is a small share of the step it feeds (BENCHMARKS.md), while the run's soft targets,
stored, would hold a row of every level's codes per SID target. Once per epoch would cost the same
forwards as per batch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from cluster.errors import BadRequest
from cluster.spec import JobSpec
from indexing.dataset import Example
from indexing.sid import SidIndex
from indexing.trie import SidTrie
from sft.engine_setup import SftError
from sft.sasrec import encode, trim_padding
from sft.sasrec_scorer import check_teacher, load_scorer
from sft.sid_losses import TeacherTargets, distill_tables, token_levels
from sft.tasks import TokenizedExample

WHERE = "sft.distill.path"


def check_distill(spec: JobSpec, num_items: int) -> None:
    """`sft.distill.path` refused (exit 2 naming the key) unless it is a SASRec scorer of this catalogue."""
    if spec.sft.distill.path is not None:
        check_teacher(spec.sft.distill.path, num_items, spec.data.name, where=WHERE)


def next_items(starts: list[int], history: int) -> list[tuple[int, int]]:
    """(j, start) for each next-item SID of a seqrec row: the SID beginning at target position
    `start` is item j of the example's items (the history, then the target). `starts`: where the row's
    supervised SIDs begin, in order; the answer is the last, the history's (when supervised) the first
    `history`, and any between them a retrieved item's."""
    if len(starts) == 1:
        return [(history, starts[0])]
    return [*enumerate(starts[:history]), (history, starts[-1])]


class Distiller:
    def __init__(self, spec: JobSpec, num_items: int, index: SidIndex, token_ids: Mapping[str, int], trie: SidTrie,
                 device: torch.device, item_ids: Mapping[int, int] | None = None):
        """`item_ids`: item -> its item token's id (sft.backbone.add_item_tokens), when histories are written so."""
        check_distill(spec, num_items)
        try:
            model, _ = load_scorer(spec.sft.distill.path)
        except BadRequest as exc:
            raise BadRequest(f"{WHERE}: {exc}") from exc
        self.model, self.device = model.to(device), device
        self.temperature = spec.sft.distill.temperature
        self.sid_of = {i: tuple(token_ids[t] for t in index.tokens(i)) for i in index.items()}
        items = sorted(self.sid_of, key=self.sid_of.__getitem__)  # lexicographic, as distill_tables needs
        self.items = torch.tensor(items, device=device)  # the teacher's columns in the tables' row order
        sids = torch.tensor([self.sid_of[i] for i in items])
        self.tables = distill_tables(trie, sids, spec.sft.distill.alpha)
        self.first_level = (token_levels(trie) == 0).tolist()
        self.depth = trie.depth
        self.item_ids = dict(item_ids or {})
        self.item_of = {t: i for i, t in self.item_ids.items()}
        self.item_columns = torch.tensor(sorted(self.item_ids), device=device)  # item-token order

    def targets(self, examples: Sequence[TokenizedExample], targets: torch.Tensor) -> TeacherTargets | None:
        """The teacher's targets of a collated batch (`targets` [B, W], sft.batches.collate); None
        when none of its examples has a next item to distil."""
        histories: dict[tuple[int, ...], int] = {}
        spans = []  # (batch row, target position where a distilled SID begins, teacher row)
        item_spans = []  # (batch row, target position of a distilled item token, teacher row)
        for b, ex in enumerate(examples):
            if not ex.items:
                continue
            row = targets[b].tolist()
            starts = [p for p, t in enumerate(row) if t >= 0 and self.first_level[t]]
            for j, start in next_items(starts, len(ex.items) - 1):
                if tuple(row[start:start + self.depth]) != self.sid_of[ex.items[j]]:
                    raise SftError(f"a seqrec example's supervised SIDs do not follow its items (item {ex.items[j]} "
                                   f"at SID {j}); the prompt layout no longer matches sft/distill.py")
                if j:
                    spans.append((b, start, histories.setdefault(ex.items[:j], len(histories))))
            if not self.item_of:  # histories written as SIDs: no second pass over the row
                continue
            # Item tokens: the history's come first, in order; any after them are retrieved items.
            at = [p for p, t in enumerate(row) if t in self.item_of][:len(ex.items) - 1]
            for j, p in enumerate(at):
                if self.item_of[row[p]] != ex.items[j]:
                    raise SftError(f"a seqrec example's supervised item tokens do not follow its items (item "
                                   f"{ex.items[j]} at history position {j}); the prompt layout no longer matches "
                                   "sft/distill.py")
                if j:
                    item_spans.append((b, p, histories.setdefault(ex.items[:j], len(histories))))
        if not spans and not item_spans:
            return None
        seqs, _ = encode([Example(0, h, -1) for h in histories], self.model.max_len, self.model.pad)  # no target read
        # Positions count from the right (SASRec.states): a batch cut to its longest history scores alike.
        (seqs,) = trim_padding(seqs, self.model.pad)
        with torch.no_grad():
            # SASRec.scores, with the items read in the tables' order (and in item-token order where
            # histories are item tokens) rather than a copy of every score gathered into it.
            table = self.model.item_table()
            last = self.model.states(seqs.to(self.device), None, table)[:, -1]
            logits = (last @ table[self.items].T).float()
            items = (last @ table[self.item_columns].T).float() if self.item_ids else None
        if self.temperature != 1.0:
            logits = logits / self.temperature
            items = None if items is None else items / self.temperature
        rows = torch.full(targets.shape, -1, dtype=torch.long)
        if spans:
            b, start, r = torch.tensor(spans).T
            rows[b[:, None], start[:, None] + torch.arange(self.depth)] = r[:, None]
        if item_spans:
            b, p, r = torch.tensor(item_spans).T
            rows[b, p] = r
        return TeacherTargets(rows, logits, items)
