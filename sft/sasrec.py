"""SASRec baseline (Kang & McAuley 2018): a causal self-attention encoder over item-id histories,
trained with cross-entropy over the full catalogue on exactly the SFT split, evaluated by full
ranking with the same metrics as the generative model. It is the yardstick papers in this field report.

Early stopping keeps the epoch with the best validation NDCG@10 over all users; the test figures come
from that model. The reported figures cover the same users as `gream eval` (the first
`eval.max_users` of each split), so the two tables compare like with like; the all-user figures are
kept under `meta`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cluster.device import resolve
from cluster.logs import fields
from cluster.run_layout import EVAL_FILE
from cluster.spec import JobSpec
from indexing.dataset import Example, load_from_spec, split_from_spec
from sft.metrics import metrics_from_ranks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SasrecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_epochs: int = 60
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    seed: int = 0


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

    def user_state(self, seqs: torch.Tensor) -> torch.Tensor:
        """Left-padded histories [B, L] -> the representation at the last position [B, H]."""
        positions = torch.arange(seqs.shape[1], device=seqs.device)
        x = self.item(seqs) + self.pos(positions)
        h = self.encoder(self.drop(x), mask=self.attention_mask(seqs))
        return self.norm(h[:, -1])

    def scores(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores over the real items [B, num_items] (the padding row is excluded)."""
        return self.user_state(seqs) @ self.item.weight[: self.pad].T


def encode(examples: list[Example], max_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Histories left-padded to max_len (the last position is the most recent item), and targets."""
    seqs = np.full((len(examples), max_len), pad, dtype=np.int64)
    for row, ex in enumerate(examples):
        hist = ex.history[-max_len:]
        seqs[row, max_len - len(hist):] = hist
    return torch.from_numpy(seqs), torch.tensor([ex.target for ex in examples], dtype=torch.long)


@torch.no_grad()
def target_ranks(model: SASRec, seqs: torch.Tensor, targets: torch.Tensor, batch_size: int, device) -> np.ndarray:
    """0-based rank of each target among all items (items scoring strictly higher come first)."""
    model.eval()
    ranks = []
    for start in range(0, len(seqs), batch_size):
        s = model.scores(seqs[start:start + batch_size].to(device))
        t = targets[start:start + batch_size].to(device)
        ranks.append((s > s.gather(1, t[:, None])).sum(1).cpu())
    return torch.cat(ranks).numpy()


def report(ranks: np.ndarray, ks: list[int], users: int | None) -> dict:
    """Metrics over the first `users` examples (all when None), with the count, as `gream eval` writes them."""
    ranks = ranks[:users] if users else ranks
    return {**metrics_from_ranks(ranks, ks), "users": len(ranks)}


def train_and_evaluate(split, num_items: int, max_len: int, ks: list[int], cfg: SasrecConfig,
                       device: torch.device, users: int | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    model = SASRec(num_items, max_len, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_x, train_y = encode(split.train, max_len, model.pad)
    valid = encode(split.valid, max_len, model.pad)
    test = encode(split.test, max_len, model.pad)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"epoch": -1, "score": -1.0, "state": None, "valid": None}
    bad_epochs = 0
    for epoch in range(cfg.max_epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        total, t0 = 0.0, time.perf_counter()
        for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"sasrec epoch {epoch}", leave=False):
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.cross_entropy(model.scores(train_x[idx].to(device)), train_y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        valid_ranks = target_ranks(model, *valid, cfg.batch_size, device)
        valid_metrics = metrics_from_ranks(valid_ranks, ks)
        score = valid_metrics[f"ndcg@{max(ks)}"]
        log.info("sasrec epoch", extra=fields(epoch=epoch, loss=round(total / len(order), 4),
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
    model.load_state_dict(best["state"])
    test_ranks = target_ranks(model, *test, cfg.batch_size, device)
    return {"valid": report(best["valid"], ks, users), "test": report(test_ranks, ks, users),
            "all_users": {"valid": report(best["valid"], ks, None), "test": report(test_ranks, ks, None)},
            "best_epoch": best["epoch"]}


def run(spec: JobSpec, cfg: SasrecConfig | None = None) -> Path:
    """Train and evaluate SASRec on the spec's split; writes `<run_dir>/baselines/sasrec/eval.json`."""
    cfg = cfg or SasrecConfig()
    ds = load_from_spec(spec)
    split = split_from_spec(spec, ds)
    device = resolve(spec.cluster.device).torch_device()
    t0 = time.perf_counter()
    result = train_and_evaluate(split, ds.num_items, spec.data.max_history, spec.eval.ks, cfg, device,
                                spec.eval.max_users)
    out_dir = spec.layout.baseline("sasrec")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"valid": result["valid"], "test": result["test"],
           "meta": {"all_users": result["all_users"], "best_epoch": result["best_epoch"],
                    "train_secs": round(time.perf_counter() - t0, 1), "dataset": ds.name, "split": spec.data.split,
                    "config": asdict(cfg)}}
    path = out_dir / EVAL_FILE
    path.write_text(json.dumps(out, indent=2))
    log.info("sasrec done", extra=fields(path=str(path), **{f"test_{k}": round(v, 4) for k, v in out["test"].items()}))
    return path
