"""SID-aware SFT objectives (`sft.loss`, `sft.prefix_loss`): the math, as functions of one batch's
logits and targets at the supervised positions, so each can be checked by hand on a toy trie.

Trie-masked cross-entropy (MSL): a SID token's softmax is normalised over the codes the trie allows
after that SID's earlier tokens, as the constrained beam normalises them (sft/hf_beam.py), so no
probability is spent on tokens decoding never offers. Targets that are not SID tokens (the end of
turn, titles, thoughts), and SID tokens that do not continue a SID of the trie, keep the full softmax.

Prefix-aware loss (after APAO, arXiv 2603.02730): a beam drops the target when a prefix of it scores
below other prefixes of that length, however well its later tokens would score, so a loss on the
prefix scores (each a sum of constrained log-probabilities, the beam's score) is added to the token
loss. From one teacher-forced forward only the prefixes that leave the target's path at their last
token can be scored, so its negatives are those: for the target's level-l prefix, `negatives`
sibling codes drawn from the trie's children of the target's level-(l-1) prefix, each scored as the
target's parent prefix plus the sibling's log-probability.
- pointwise: -log P(target prefix) - mean log(1 - P(negative prefix)), with P = exp(prefix score);
- pairwise: mean log(1 + exp(negative score - target score)), the logistic loss of each pair.
A level where the target's parent has no other child is forced in the beam and left out. The levels
of one target are weighted softmax(level loss / temperature), held constant in the gradient: the
closed-form worst case over level weights with a KL penalty towards uniform, so the prefix most at
risk of pruning gets the most weight (temperature -> 0: only it).

Offline distillation (`sft.distill`, sft/distill.py runs the teacher): a next-item SID token's
target becomes (1 - alpha) one-hot + alpha q_l, where q_l(c) is the teacher's p_T(item | history)
(tempered: p_T^(1/T) renormalised) summed over the items whose SID starts with the target's own
first l codes and then c, renormalised over those items (teacher forcing, as the token loss). It is
one cross-entropy against a mixed target, under the normalisation `sft.loss` gives the token term:
over the trie's allowed codes with trie_ce (q_l lies on exactly those codes), over the vocabulary
with ce, where the soft term also pushes down every token outside the level, as the one-hot term
does. So alpha = 0 is the objective without distillation, and the two terms never disagree about
what a probability is.

Cost: where the model's logits are its output layer on the decoder's last hidden state (hf_beam's
`head_split`), a SID target's logits are computed over its level's codes only, never over the whole
vocabulary; the output layer is the largest share of a small backbone's step.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

from cluster.device import autocast
from cluster.spec import SftSpec
from indexing.trie import Cols, SidTrie
from sft.hf_beam import head_split
from sft.logit_adjust import code_bias
from sft.tasks import IGNORE_INDEX


@dataclass(frozen=True)
class PrefixLoss:
    kind: Literal["pointwise", "pairwise"]
    weight: float  # APAO's beta: the prefix loss's weight beside the token loss
    negatives: int
    temperature: float


class HeadView:
    """The logits at a batch's kept positions ([B, P] flattened), computed only for the rows and
    columns asked when built from hidden states and the output layer, else read from full logits."""

    def __init__(self, logits: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                 head: torch.nn.Linear | None = None, device_type: str = "cpu", amp_dtype: torch.dtype = torch.float32):
        self.logits = None if logits is None else logits.reshape(-1, logits.shape[-1])
        self.hidden = None if hidden is None else hidden.reshape(-1, hidden.shape[-1])
        self.head, self.device_type, self.amp_dtype = head, device_type, amp_dtype

    def rows(self, idx: torch.Tensor, cols: Cols = slice(None)) -> torch.Tensor:
        """Float [len(idx), columns]."""
        if self.logits is not None:
            return self.logits[idx, cols] if isinstance(cols, slice) else self.logits[idx[:, None], cols]
        bias = None if self.head.bias is None else self.head.bias[cols]
        with autocast(self.device_type, self.amp_dtype):
            return F.linear(self.hidden[idx], self.head.weight[cols], bias).float()


class TeacherTargets(NamedTuple):
    """One batch's teacher (sft/distill.py): `rows` [B, P] the row of `logits` each target is
    distilled from, -1 where it keeps its one-hot target alone; `logits` [R, S] the teacher's
    tempered log-scores over the SIDs of the Distill tables, each row up to a constant; with item
    tokens (sft.history_input: item), `rows` also marks the history's item targets, distilled from
    the row's `items`."""

    rows: torch.Tensor
    logits: torch.Tensor
    items: torch.Tensor | None = None  # [R, N]: the same scores over the item tokens, in their order


@dataclass(frozen=True)
class Distill:
    """`sft.distill.alpha` and the trie seen from its SIDs, which are in lexicographic order (the
    teacher's columns follow it), so the SIDs below any trie node are one run of rows: `cols` [S,
    depth] each SID's level-l token's column among that level's codes (trie.columns[l]); per trie
    node, `start` the first SID below it and `count` how many; `spans[l]` the most SIDs below one node
    at depth l."""

    alpha: float
    cols: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    spans: tuple[int, ...]


# (the kept positions' HeadView, their targets [B, P], teacher=TeacherTargets | None) -> the batch's loss
Objective = Callable[..., torch.Tensor]


def head_view(model, inputs: dict, positions: torch.Tensor, device: torch.device, amp_dtype: torch.dtype) -> HeadView:
    """The model's forward at the kept `positions`: the decoder's hidden states where the model splits
    (so the output layer runs later, on the columns each target needs), else its full logits."""
    split = head_split(getattr(model, "module", model))  # a DeepSpeed engine holds the model as .module
    with autocast(device.type, amp_dtype):
        if split is None:
            return HeadView(logits=model(**inputs, logits_to_keep=positions, use_cache=False).logits.float())
        hidden = split[0](**inputs, use_cache=False).last_hidden_state[:, positions]
    return HeadView(hidden=hidden, head=split[1], device_type=device.type, amp_dtype=amp_dtype)


def sft_objective(sft: SftSpec, trie: SidTrie, distill: Distill | None = None,
                  log_mass: torch.Tensor | None = None, items: slice | None = None) -> Objective | None:
    """The batch loss `sft.loss`, `sft.prefix_loss`, `distill` (distill_tables) and `sft.logit_adjust`
    (over `log_mass`, sft/logit_adjust.py) ask for; None for plain cross-entropy. `items`: the item
    tokens' ids (sft.history_input: item), whose targets take a softmax over the items."""
    p = sft.prefix_loss
    if sft.loss == "ce" and p.kind == "none" and distill is None:
        return None
    prefix = None if p.kind == "none" else PrefixLoss(p.kind, p.weight, p.negatives, p.temperature)
    bias = code_bias(trie, sft.logit_adjust * log_mass) if sft.logit_adjust and log_mass is not None else None
    return partial(sid_token_loss, trie, token_levels(trie), masked=sft.loss == "trie_ce", prefix=prefix,
                   distill=distill, bias=bias, items=items)


def distill_tables(trie: SidTrie, sids: torch.Tensor, alpha: float) -> Distill:
    """Distill of `sids` [S, depth] (token ids of SIDs of the trie, in lexicographic order)."""
    rows = sids.tolist()
    if rows != sorted(rows):
        raise ValueError("distill_tables needs the SIDs in lexicographic order (the teacher's columns follow it)")
    sids = sids.to(trie.device)
    nodes = torch.stack([trie.states_for_prefixes(sids, torch.full((len(sids),), d, device=trie.device))
                         for d in range(trie.depth)], 1)
    cols = [torch.searchsorted(trie.columns[d], sids[:, d].contiguous()) for d in range(trie.depth)]
    order = torch.arange(len(sids), device=trie.device)
    start = torch.full((trie.num_nodes,), len(sids), dtype=torch.long, device=trie.device)
    count = torch.zeros(trie.num_nodes, dtype=torch.long, device=trie.device)
    for d in range(trie.depth):
        start.scatter_reduce_(0, nodes[:, d], order, "amin")
        count.index_add_(0, nodes[:, d], torch.ones_like(order))
    spans = tuple(int(count[nodes[:, d]].max()) for d in range(trie.depth))
    return Distill(alpha, torch.stack(cols, 1), start, count, spans)


def sid_marginals(logits: torch.Tensor, rows: torch.Tensor, states: torch.Tensor, distill: Distill, depth: int,
                  width: int) -> torch.Tensor:
    """q [N, width]: per level-`depth` target, the teacher's distribution (row `rows` [N] of `logits`
    [R, S]) over the SIDs below its prefix node (`states` [N]), summed by the SIDs' code at the level
    and renormalised. Those SIDs are one run of columns, read through a window of the level's span."""
    # The first level: every SID lies below the root, so every row reads the whole catalogue and all
    # share one column map; no per-target window of the catalogue's size is built.
    root = distill.spans[depth] == logits.shape[1]
    if root:
        z = logits[rows]
    else:
        offsets = torch.arange(distill.spans[depth], device=states.device)
        window = (distill.start[states][:, None] + offsets).clamp(max=logits.shape[1] - 1)
        below = offsets < distill.count[states][:, None]
        z = logits[rows[:, None], window].masked_fill(~below, float("-inf"))
    w = torch.exp(z - z.amax(1, keepdim=True))  # the likeliest SID below weighs 1: the sum cannot underflow
    q = torch.zeros(len(states), width, dtype=w.dtype, device=w.device)
    q = q.index_add_(1, distill.cols[:, depth], w) if root else q.scatter_add_(1, distill.cols[window, depth], w)
    return q / q.sum(1, keepdim=True)


def distill_gap(trie: SidTrie, distill: Distill, teacher: TeacherTargets, rows: torch.Tensor, level: torch.Tensor,
                states: torch.Tensor, tokens: torch.Tensor, level_logp: Callable) -> torch.Tensor:
    """Sum over the distilled SID targets of CE(q_l, p) - CE(one-hot, p): alpha times it turns their
    token loss into (1 - alpha) CE(one-hot) + alpha CE(q_l). `rows` [N]: each SID target's teacher
    row (-1: none), `level`, `states`, `tokens` [N] as in level_blocks; `level_logp(d, idx)`: the
    model's log-probs [n, level d's codes] of SID targets `idx`."""
    total = teacher.logits.new_zeros(())
    for depth in range(trie.depth):
        idx = ((level == depth) & (rows >= 0)).nonzero()[:, 0]
        if not idx.numel():
            continue
        codes = trie.columns[depth]
        q = sid_marginals(teacher.logits, rows[idx], states[idx], distill, depth, codes.numel())
        logp = level_logp(depth, idx)
        own = logp.gather(1, torch.searchsorted(codes, tokens[idx])[:, None])[:, 0]
        total = total + (own - (q * logp.masked_fill(q == 0, 0.0)).sum(1)).sum()  # 0 x -inf off the trie
    return total


def token_levels(trie: SidTrie) -> torch.Tensor:
    """Long [V]: each SID token's level (0-based position in its SIDs), -1 for every other token."""
    bounds = torch.tensor(trie.level_start, device=trie.device)
    level = torch.searchsorted(bounds, trie.edge_child, right=True) - 2  # a child at depth d holds a level d-1 token
    tokens = trie.edge_keys % trie.vocab_size
    out = torch.full((trie.vocab_size,), -1, dtype=torch.long, device=trie.device)
    out[tokens] = level
    if not torch.equal(out[tokens], level):
        raise ValueError("a token occurs at two SID levels; the level of a target could not be told from its id")
    return out


def sid_levels(levels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, P]: the SID level of each target, -1 where it is unsupervised or not a SID token."""
    return torch.where(targets != IGNORE_INDEX, levels[targets.clamp(min=0)], -1)


def prefix_states(trie: SidTrie, level: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N]: the trie node of each SID target's prefix, in the row-major order of `level >= 0`. A SID's
    tokens are consecutive supervised positions, so a level-l target's prefix is the l targets before it."""
    b, p = (level >= 0).nonzero(as_tuple=True)
    lengths = level[b, p]
    window = (p - lengths)[:, None] + torch.arange(trie.depth - 1, device=p.device)
    return trie.states_for_prefixes(targets[b[:, None], window.clamp(0, targets.shape[1] - 1)], lengths)


def sid_paths(trie: SidTrie, level: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`level` with -1 where a SID token does not continue a path of the trie (a code in free text, a
    SID the index lacks): those targets keep the full softmax. Also the remaining ones' prefix states."""
    states = prefix_states(trie, level, targets)
    b, p = (level >= 0).nonzero(as_tuple=True)
    follows = trie.advance(states, targets[b, p]) >= 0
    return level.index_put((b[~follows], p[~follows]), torch.tensor(-1, device=level.device)), states[follows]


class Block(NamedTuple):
    """The SID targets of one level: which (rows of the SID targets), their constrained log-probs
    over the level's codes [n, C] (-inf where the trie forbids), and each target's column."""

    rows: torch.Tensor
    logp: torch.Tensor
    col: torch.Tensor


def level_blocks(trie: SidTrie, view: HeadView, flat: torch.Tensor, level: torch.Tensor, states: torch.Tensor,
                 tokens: torch.Tensor, bias: list[torch.Tensor] | None = None) -> list[Block | None]:
    """Per level, the constrained log-probs of the SID targets at flat positions `flat` (levels
    `level`, prefix `states`, ids `tokens`); None for a level without targets. `bias`: added to the
    logits, per depth [its nodes, its codes] (sft/logit_adjust.py code_bias)."""
    blocks = []
    for depth in range(trie.depth):
        rows = (level == depth).nonzero()[:, 0]
        if not rows.numel():
            blocks.append(None)
            continue
        (_, cols, bits), = trie.groups(states[rows])  # one depth, so one block of columns
        ids = torch.arange(cols.start, cols.stop, device=tokens.device) if isinstance(cols, slice) else cols
        logits = view.rows(flat[rows], cols)
        if bias is not None:
            logits = logits + bias[depth][states[rows] - trie.level_start[depth]]
        logp = torch.log_softmax(logits.masked_fill(~bits, float("-inf")), dim=-1)
        blocks.append(Block(rows, logp, torch.searchsorted(ids, tokens[rows])))
    return blocks


def item_target_loss(view: HeadView, idx: torch.Tensor, tokens: torch.Tensor, items: slice, alpha: float = 0.0,
                     teacher: torch.Tensor | None = None) -> torch.Tensor:
    """Summed loss of item-token targets (flat positions `idx`, ids `tokens`): each one's softmax over
    the item tokens `items` only, as SASRec's over its items; where `teacher` [len(idx), N] holds a
    finite row (the teacher's tempered log-scores over the items), the cross-entropy against
    (1 - alpha) one-hot + alpha softmax(teacher row), as a SID token's distillation."""
    logp = torch.log_softmax(view.rows(idx, items), -1)
    own = logp.gather(1, (tokens - items.start)[:, None])[:, 0]
    total = -own.sum()
    if teacher is None or not alpha:
        return total
    has = torch.isfinite(teacher).any(1)
    q = torch.softmax(teacher[has], -1)
    return total + alpha * (own[has] - (q * logp[has]).sum(1)).sum()


def sid_token_loss(trie: SidTrie, levels: torch.Tensor, view: HeadView, targets: torch.Tensor,
                   masked: bool, prefix: PrefixLoss | None = None, distill: Distill | None = None,
                   teacher: TeacherTargets | None = None, bias: list[torch.Tensor] | None = None,
                   items: slice | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the supervised targets ([B, P], IGNORE_INDEX where unsupervised),
    SID tokens trie-masked when `masked`, plus the prefix loss; with `distill` and the batch's
    `teacher`, its distilled SID targets' loss is the cross-entropy against the mixed target; with
    `bias` (masked only), the SID tokens' logits are popularity-adjusted (sft/logit_adjust.py); item
    tokens (ids in `items`) by item_target_loss, distilled from `teacher.items` where `teacher.rows` says."""
    flat_targets = targets.reshape(-1)
    supervised = flat_targets != IGNORE_INDEX
    item = (supervised & (flat_targets >= items.start) & (flat_targets < items.stop) if items is not None
            else torch.zeros_like(supervised))
    level, states = sid_paths(trie, sid_levels(levels, targets), targets.clamp(min=0))
    sid = level.reshape(-1) >= 0
    flat = sid.nonzero()[:, 0]
    sid_level = level.reshape(-1)[flat]
    blocks = (level_blocks(trie, view, flat, sid_level, states, flat_targets[flat], bias if masked else None)
              if masked or prefix is not None else [])
    present = [b for b in blocks if b is not None]
    sid_logp = (torch.cat([b.logp.gather(1, b.col[:, None])[:, 0] for b in present])[torch.argsort(torch.cat(
        [b.rows for b in present]))] if present else torch.zeros(0, device=targets.device))
    rows = None if distill is None or teacher is None else teacher.rows.reshape(-1)[flat]  # of the SID targets
    # Scored apart from the cross-entropy over the vocabulary: every SID target when masked, else the
    # distilled ones, whose softmax is read at their level's codes too.
    apart = torch.zeros_like(supervised)
    if masked:
        apart[flat] = True
    elif rows is not None:
        apart[flat[rows >= 0]] = True
    full = (supervised & ~apart & ~item).nonzero()[:, 0]
    total = F.cross_entropy(view.rows(full), flat_targets[full], reduction="sum")
    if item.any():
        at = item.nonzero()[:, 0]
        total = total + item_target_loss(view, at, flat_targets[at], items, 0.0 if distill is None else distill.alpha,
                                         _item_teacher(teacher, at))
    if masked:
        total = total - sid_logp.sum()
    if rows is not None:
        if masked:
            def level_logp(depth: int, idx: torch.Tensor) -> torch.Tensor:
                return blocks[depth].logp[torch.searchsorted(blocks[depth].rows, idx)]
        else:
            own = (rows >= 0).nonzero()[:, 0]
            logp = torch.log_softmax(view.rows(flat[own]), -1)
            total = total - logp.gather(1, flat_targets[flat[own]][:, None]).sum()

            def level_logp(depth: int, idx: torch.Tensor) -> torch.Tensor:
                return logp[torch.searchsorted(own, idx)[:, None], trie.columns[depth]]
        total = total + distill.alpha * distill_gap(trie, distill, teacher, rows, sid_level, states, flat_targets[flat],
                                                    level_logp)
    loss = total / supervised.sum()
    if prefix is None:
        return loss
    return loss + prefix.weight * prefix_loss(blocks, sid_logp, sid_items(level, trie.depth), prefix)


def _item_teacher(teacher: TeacherTargets | None, at: torch.Tensor) -> torch.Tensor | None:
    """The teacher's item log-scores of the item targets at flat positions `at`, -inf rows where none."""
    if teacher is None or teacher.items is None:
        return None
    rows = teacher.rows.reshape(-1)[at]
    out = teacher.items[rows.clamp(min=0)]
    return out.masked_fill((rows < 0)[:, None], float("-inf"))


def sid_items(level: torch.Tensor, depth: int) -> torch.Tensor:
    """[M, depth]: for each complete SID among the targets, the indices of its levels' targets in
    the row-major order of `level >= 0`."""
    order = (level >= 0).flatten().cumsum(0) - 1
    flat = level.flatten()
    ends = ((flat == depth - 1) & (torch.arange(flat.numel(), device=flat.device) % level.shape[1] >= depth - 1))
    pos = ends.nonzero()[:, 0, None] - (depth - 1) + torch.arange(depth, device=flat.device)
    whole = (flat[pos] == torch.arange(depth, device=flat.device)).all(1)
    return order[pos[whole]]


def prefix_loss(blocks: list[Block | None], logp: torch.Tensor, items: torch.Tensor, prefix: PrefixLoss) -> torch.Tensor:
    """Mean over SIDs of the worst-prefix-weighted level losses. `blocks`: level_blocks of the N SID
    targets, `logp` [N] the targets' own constrained log-probs, `items` [M, L] (sid_items)."""
    if items.numel() == 0:
        return logp.new_zeros(())
    pos = logp[items].cumsum(1)  # [M, L]: the target's prefix scores
    losses, has = [], []
    for j, block in enumerate(blocks):
        cand = block.logp
        allowed = torch.isfinite(cand) & (torch.arange(cand.shape[1], device=cand.device) != block.col[:, None])
        # Distinct siblings at random: the top `negatives` of uniform draws over the allowed codes, drawn
        # for the whole block and then picked by item, so that no [M, C] copy enters the graph.
        picked, idx = torch.rand(cand.shape, device=cand.device).masked_fill(~allowed, -1.0).topk(
            min(prefix.negatives, cand.shape[1]), dim=1)
        where = torch.empty_like(logp, dtype=torch.long)
        where[block.rows] = torch.arange(len(block.rows), device=where.device)
        at = where[items[:, j]]
        real = picked[at] >= 0  # [M, K]
        neg = (pos[:, j] - logp[items[:, j]])[:, None] + cand.gather(1, idx)[at].masked_fill(~real, 0.0)
        if prefix.kind == "pairwise":
            level_loss = (F.softplus(neg - pos[:, j, None]) * real).sum(1) / real.sum(1).clamp(min=1)
        else:
            per = -torch.log(-torch.expm1(neg.clamp(max=-1e-6)))
            level_loss = -pos[:, j] + (per * real).sum(1) / real.sum(1).clamp(min=1)
        losses.append(level_loss)
        has.append(real.any(1))  # levels the beam can prune at
    level_loss, has = torch.stack(losses, 1), torch.stack(has, 1)
    weights = torch.softmax((level_loss.detach() / prefix.temperature).masked_fill(~has, float("-inf")), dim=-1)
    counted = has.any(-1)
    if not counted.any():
        return logp.new_zeros(())
    return (weights[counted] * level_loss[counted].masked_fill(~has[counted], 0.0)).sum(-1).mean()
