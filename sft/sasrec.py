"""SASRec baseline (Kang & McAuley 2018): a causal self-attention encoder over item-id histories,
trained on exactly the SFT split's training targets, either each prefix as an example with its
target at the last position (`objective: last`, the default) or with SASRec's own shifted-sequence
objective (`shifted`: each user's latest training window once per epoch, the next item predicted at
every position); either way every training target counts once per epoch. Cross-entropy over the full
catalogue (`loss: full`) or over the target and `negatives` items drawn uniformly, shared by a batch
(`loss: sampled`, sampled softmax), and evaluated by full ranking with the same metrics as the
generative model. It is the yardstick papers in this field report.

Early stopping keeps the epoch with the best validation NDCG@10 (sft.metrics.selection_metric) over
all users, stopping after `patience` epochs without a better one; the test figures come from that
model. The reported figures cover the same users as `gream eval` (the first `eval.max_users` of each
split), so the two tables compare like with like; the all-user figures are kept under `meta`.
`ranks.json` beside eval.json holds the per-user ranks of the reported users, capped at `eval.beam_width`
as the generative model's are (cluster.eval_record); sft/sasrec_eval.py runs the baseline and writes both.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cluster.errors import BadRequest
from cluster.logs import fields
from cluster.spec import JobSpec
from indexing.dataset import Example, Split
from sft.metrics import metrics_from_ranks, selection_metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SasrecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # users (training windows) per step
    max_epochs: int = 60
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    loss: Literal["full", "sampled"] = "full"
    negatives: int = 100  # items drawn per batch for loss "sampled"
    # "last": every training example (each prefix) once per epoch, its target at the last position
    # only, where evaluation reads the prediction (8x the rows per epoch on Office); "shifted":
    # SASRec's, each user's latest window once per epoch, the next item at every position. Chosen on
    # Office validation (BENCHMARKS.md at 1878e6b, "Office quality").
    objective: Literal["shifted", "last"] = "last"
    # Rank only items outside the user's history (the target kept), as RecTools' filter_viewed and
    # RecBole's full-sort evaluation do. Off by default: gream's generative evaluation ranks every
    # item, so comparisons with it keep this off; on for checks against published figures.
    exclude_history: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in ("full", "sampled"):
            raise BadRequest(f"SASRec loss must be 'full' or 'sampled', got {self.loss!r}")
        if self.negatives < 1:
            raise BadRequest(f"SASRec negatives must be >= 1, got {self.negatives}")
        if self.objective not in ("shifted", "last"):
            raise BadRequest(f"SASRec objective must be 'shifted' or 'last', got {self.objective!r}")


def check_settings(data: object, where: str) -> dict:
    """`data` as SasrecConfig fields, or BadRequest naming `where` and what is wrong."""
    if not isinstance(data, dict):
        raise BadRequest(f"{where}: expected a JSON object of SASRec settings, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields_of(SasrecConfig)})
    if unknown:
        raise BadRequest(f"{where}: unknown SASRec settings {unknown}; expected fields of SasrecConfig")
    return data


def read_config(path: Path) -> dict:
    """SasrecConfig fields from a JSON file: the fields themselves, or a tune.json's `chosen`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"{path}: not a readable JSON file of SASRec settings ({e})") from e
    return check_settings(data.get("chosen", data) if isinstance(data, dict) else data, str(path))


def config_from(path: str | Path | None, **fields) -> SasrecConfig:
    """SasrecConfig from a settings file (`read_config`; None: the defaults), `fields` overriding it."""
    return SasrecConfig(**{**(read_config(Path(path)) if path else {}), **fields})


class SASRec(nn.Module):
    def __init__(self, num_items: int, max_len: int, cfg: SasrecConfig):
        super().__init__()
        self.pad = num_items  # padding id sits after the real items
        self.item = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=self.pad)
        self.pos = nn.Embedding(max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.hidden, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.max_len = max_len
        # Small embeddings: the item table is also the output layer, and N(0, 1) rows would start
        # the catalogue softmax with huge logits.
        for emb in (self.item, self.pos):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[self.pad].zero_()
        self.heads = cfg.heads

    def attention_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """Causal, padding keys blocked, [B * heads, L, L]. Every position may attend to itself, so
        the (left) padding rows stay finite instead of softmaxing over nothing."""
        length = seqs.shape[1]
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        blocked = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)[None]
        blocked = (blocked | (seqs == self.pad)[:, None, :]) & ~eye
        mask = torch.zeros(blocked.shape, device=seqs.device).masked_fill(blocked, float("-inf"))
        return mask.repeat_interleave(self.heads, 0)

    def item_table(self) -> torch.Tensor:
        """Every item's vector [num_items + 1, H] (padding last), read at the input and as the output
        layer; a plug-in (sft/grasp.py) adds features to it."""
        return self.item.weight

    def states(self, seqs: torch.Tensor, context: torch.Tensor | None = None,
               table: torch.Tensor | None = None) -> torch.Tensor:
        """Left-padded histories [B, L <= max_len] -> the representation at every position [B, L, H].
        Positions count from the right, so a batch cut to its longest history (trim_padding) gives
        the last item the same position embedding as the full width does. `context`: per-row
        features of a plug-in (None here); `table`: item_table() when the caller has it already
        (a plug-in's table is computed, and the output layer needs it too)."""
        length = seqs.shape[1]
        positions = torch.arange(self.max_len - length, self.max_len, device=seqs.device)
        x = (self.item_table() if table is None else table)[seqs] + self.pos(positions)
        return self.norm(self.encoder(self.drop(x), mask=self.attention_mask(seqs)))

    def scores(self, seqs: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Scores over the real items [B, num_items] (the padding row is excluded)."""
        table = self.item_table()
        return self.states(seqs, context, table)[:, -1] @ table[: self.pad].T


def encode(examples: list[Example], max_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories left-padded to max_len (the last position is the most recent item), and targets."""
    seqs = np.full((len(examples), max_len), pad, dtype=np.int64)
    for row, ex in enumerate(examples):
        hist = ex.history[-max_len:]
        seqs[row, max_len - len(hist):] = hist
    return torch.from_numpy(seqs), torch.tensor([ex.target for ex in examples], dtype=torch.long)


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Row indices in batches of similar length, the batches in random order: ties are shuffled
    before a stable sort by length, so each epoch draws other neighbours. Beauty's training windows
    average 6 items of a 50-wide array; random batches are as wide as their longest window (~44),
    length batches about 6 (trim_padding), which makes an epoch several times cheaper."""
    shuffled = torch.randperm(len(lengths), generator=gen)
    order = shuffled[torch.argsort(lengths[shuffled], stable=True)]
    batches = list(order.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


IGNORE = -100  # target at a padding position (cross_entropy's ignore_index)


def training_windows(examples: list[Example], max_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SASRec's shifted-sequence pairs [U, max_len]: per user, the latest training example's history
    and target as one window (the split lists a user's examples in time order, each a prefix of the
    next), inputs left-padded, and at every position the item that follows it (IGNORE on padding)."""
    latest: dict[int, Example] = {}
    for ex in examples:
        latest[ex.user] = ex
    inputs = np.full((len(latest), max_len), pad, dtype=np.int64)
    targets = np.full((len(latest), max_len), IGNORE, dtype=np.int64)
    for row, ex in enumerate(latest.values()):
        window = (*ex.history, ex.target)[-(max_len + 1):]
        inputs[row, max_len - len(window) + 1:] = window[:-1]
        targets[row, max_len - len(window) + 1:] = window[1:]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def prefix_windows(examples: list[Example], max_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective "last": every example's history, left-padded, with its target at the last position
    and IGNORE elsewhere, so train_loss supervises only where evaluation predicts."""
    inputs, last = encode(examples, max_len, pad)
    targets = torch.full(inputs.shape, IGNORE, dtype=torch.long)
    targets[:, -1] = last
    return inputs, targets


def trim_padding(seqs: torch.Tensor, pad: int, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row (most histories are short, and every
    layer's cost grows with the width), and the same columns of `aligned` tensors."""
    used = (seqs != pad).any(0)
    start = int(used.to(torch.int8).argmax()) if bool(used.any()) else seqs.shape[1] - 1
    return tuple(t[:, start:] for t in (seqs, *aligned))


def drop_history(scores: torch.Tensor, seqs: torch.Tensor, targets: torch.Tensor, pad: int) -> torch.Tensor:
    """Scores [B, items] with each row's history items (seqs [B, L], pad excluded) at -inf, except
    the row's target, so a repeated purchase still counts."""
    rows = torch.arange(len(seqs), device=seqs.device)[:, None].expand_as(seqs)
    real = seqs != pad
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[rows[real], seqs[real]] = True
    seen[torch.arange(len(seqs), device=seqs.device), targets] = False
    return scores.masked_fill(seen, float("-inf"))


@torch.no_grad()
def batch_scores(model: SASRec, seqs: torch.Tensor, targets: torch.Tensor, batch_size: int, device,
                 exclude_history: bool = False, context: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """(scores over every item [B, items], targets [B]) batch by batch, in eval mode; with
    `exclude_history` the history items (the target kept) score -inf. `context`: the plug-in's
    per-row features, aligned with `seqs`."""
    model.eval()
    for start in range(0, len(seqs), batch_size):
        (batch,) = trim_padding(seqs[start:start + batch_size], model.pad)
        batch = batch.to(device)
        s = model.scores(batch, None if context is None else context[start:start + batch_size].to(device))
        t = targets[start:start + batch_size].to(device)
        yield (drop_history(s, batch, t, model.pad) if exclude_history else s), t


def target_ranks(model: SASRec, seqs: torch.Tensor, targets: torch.Tensor, batch_size: int, device,
                 exclude_history: bool = False, context: torch.Tensor | None = None) -> np.ndarray:
    """0-based rank of each target among all items (items scoring strictly higher come first), or
    among the items outside the history with `exclude_history`."""
    ranks = [(s > s.gather(1, t[:, None])).sum(1).cpu()
             for s, t in batch_scores(model, seqs, targets, batch_size, device, exclude_history, context)]
    return torch.cat(ranks).numpy()


def report(ranks: np.ndarray, ks: list[int], users: int | None) -> dict:
    """Metrics over the first `users` examples (all when None), with the count, as `gream eval` writes them."""
    ranks = ranks[:users] if users else ranks
    return {**metrics_from_ranks(ranks, ks), "users": len(ranks)}


def train_loss(model: SASRec, seqs: torch.Tensor, targets: torch.Tensor, cfg: SasrecConfig,
               gen: torch.Generator, context: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the supervised positions (targets [B, L] from training_windows) of the next item's
    cross-entropy against every item ("full") or against `cfg.negatives` items drawn uniformly for
    the whole batch ("sampled"); a drawn item that is a position's target does not count as its
    negative."""
    seqs, targets = trim_padding(seqs, model.pad, targets)
    keep = targets != IGNORE
    table = model.item_table()
    state, targets = model.states(seqs, context, table)[keep], targets[keep]
    if cfg.loss == "full":
        return nn.functional.cross_entropy(state @ table[: model.pad].T, targets)
    negatives = torch.randint(model.pad, (cfg.negatives,), generator=gen).to(seqs.device)
    positive = (state * table[targets]).sum(-1, keepdim=True)
    negative = (state @ table[negatives].T).masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=seqs.device))


class Plugin:
    """What a SASRec variant adds (sft/grasp.py): its model, and per-example features (`context`,
    aligned with the examples' rows) that the model reads beside the history."""

    name = "sasrec"

    def model(self, num_items: int, max_len: int, cfg: SasrecConfig) -> SASRec:
        return SASRec(num_items, max_len, cfg)

    def context(self, examples: list[Example]) -> torch.Tensor | None:
        return None

    @staticmethod
    def check(cfg: SasrecConfig) -> None:
        """BadRequest for settings the variant cannot train with (fit asks; a factory may ask earlier)."""


@dataclass
class Fitted:
    model: SASRec  # holding the best epoch's weights
    best_epoch: int
    valid_ranks: np.ndarray  # every validation user, full ranks, from the best epoch
    epochs: int  # epochs trained
    out_of_time: bool  # stopped by the deadline, not by early stopping or max_epochs
    plugin: Plugin = Plugin()


def fit(split: Split, num_items: int, max_len: int, ks: list[int], cfg: SasrecConfig, device: torch.device,
        deadline: float | None = None, plugin: Plugin | None = None) -> Fitted:
    """Train with early stopping on validation; with a `deadline` (time.perf_counter()), also stop
    after the first epoch that ends past it, keeping the best epoch so far."""
    plugin = plugin or Plugin()
    plugin.check(cfg)
    torch.manual_seed(cfg.seed)
    model = plugin.model(num_items, max_len, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = training_windows if cfg.objective == "shifted" else prefix_windows
    train_x, train_y = windows(split.train, max_len, model.pad)
    train_ctx = plugin.context(split.train)  # rows of prefix_windows are the examples' rows
    lengths = (train_x != model.pad).sum(1)
    valid = encode(split.valid, max_len, model.pad)
    valid_ctx = plugin.context(split.valid)
    gen = torch.Generator().manual_seed(cfg.seed)
    key = selection_metric(ks)
    best = {"epoch": -1, "score": -1.0, "state": None, "valid": None}
    bad_epochs, epoch, out_of_time = 0, -1, False
    for epoch in tqdm(range(cfg.max_epochs), desc="sasrec (early stopping ends sooner)", unit="epoch"):
        model.train()
        total, t0 = 0.0, time.perf_counter()
        for idx in tqdm(length_batches(lengths, cfg.batch_size, gen), desc=f"sasrec epoch {epoch}", leave=False):
            loss = train_loss(model, train_x[idx].to(device), train_y[idx].to(device), cfg, gen,
                              None if train_ctx is None else train_ctx[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        valid_ranks = target_ranks(model, *valid, cfg.batch_size, device, cfg.exclude_history, valid_ctx)
        valid_metrics = metrics_from_ranks(valid_ranks, ks)
        score = valid_metrics[key]
        log.info("sasrec epoch", extra=fields(epoch=epoch, loss=round(total / len(train_x), 4),
                                              secs=round(time.perf_counter() - t0, 1),
                                              **{f"valid_{k}": round(v, 4) for k, v in valid_metrics.items()}))
        if score > best["score"]:
            best = {"epoch": epoch, "score": score, "valid": valid_ranks,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
        if deadline is not None and time.perf_counter() >= deadline:
            out_of_time = epoch + 1 < cfg.max_epochs
            break
    model.load_state_dict(best["state"])
    return Fitted(model, best["epoch"], best["valid"], epoch + 1, out_of_time, plugin)


def ranks_on(examples: list[Example], fitted: Fitted, max_len: int, cfg: SasrecConfig, device: torch.device,
             exclude_history: bool | None = None) -> np.ndarray:
    """Full ranks of the examples' targets under the config's protocol (or the one given)."""
    exclude = cfg.exclude_history if exclude_history is None else exclude_history
    return target_ranks(fitted.model, *encode(examples, max_len, fitted.model.pad), cfg.batch_size, device, exclude,
                        fitted.plugin.context(examples))


def evaluation(fitted: Fitted, test: np.ndarray, ks: list[int], users: int | None) -> dict:
    """eval.json's figures (the first `users` of each split, and every user) and the full ranks."""
    return {"valid": report(fitted.valid_ranks, ks, users), "test": report(test, ks, users),
            "all_users": {"valid": report(fitted.valid_ranks, ks, None), "test": report(test, ks, None)},
            "best_epoch": fitted.best_epoch, "ranks": {"valid": fitted.valid_ranks, "test": test}, "fitted": fitted}


def train_and_evaluate(split: Split, num_items: int, max_len: int, ks: list[int], cfg: SasrecConfig,
                       device: torch.device, users: int | None = None, plugin: Plugin | None = None) -> dict:
    """Fit, then test once. With `exclude_history`, `with_history` holds the same model's all-user
    figures ranked over every item, what a comparison with gream's generative model reads."""
    fitted = fit(split, num_items, max_len, ks, cfg, device, plugin=plugin)
    result = evaluation(fitted, ranks_on(split.test, fitted, max_len, cfg, device), ks, users)
    if cfg.exclude_history:
        result["with_history"] = {name: report(ranks_on(examples, fitted, max_len, cfg, device, False), ks, None)
                                  for name, examples in (("valid", split.valid), ("test", split.test))}
    return result


def out_dir(spec: JobSpec, name: str = "sasrec") -> Path:
    return spec.layout.baseline(name)
