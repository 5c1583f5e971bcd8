"""BENCHMARKS.md's sections on SFT quality against the tuned SASRec, one per catalogue: the quality
records (benchmarks/quality.py), each one model's seeds against another's on every user of both
splits, with pooled paired intervals overall and per long-tail segment, in one table."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from benchmarks.report_md import Row, Section, interval, table, verdict

COLUMNS = (("valid", "ndcg@10", None), ("test", "ndcg@10", None), ("test", "recall@10", None),
           ("test", "ndcg@10", "tail"), ("test", "ndcg@10", "long"))


@dataclass(frozen=True)
class Catalogue:
    name: str
    records: dict[str, str]  # the quality records shown, in order, and what each comparison asks
    headline: tuple[str, ...]  # the records with rows in the summary table
    runs: str  # how the compared runs were made
    # The records behind the choices made on validation and the diagnoses, by kind (CHOICES' first
    # column: beam, popularity, ..., coverage), those it has: one record, or several read in turn.
    notes: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

OFFICE = Catalogue(
    "Office",
    {"quality_office": "the demo's SFT (`sft.loss: trie_ce`, distilled from the tuned SASRec, `sft.distill`; bare "
                       "prompts in batches of 64, `sft.prompt: bare`; its beam of 50 re-scored by the popularity "
                       "correction, `eval.rerank`) against that SASRec"},
    ("quality_office",),
    "SFT seeds 0-2 of `gream sft configs/demo.yaml` (`sft.seed` = K), each on one demo run's index and SASRec "
    "(`configs/sasrec_office.json`, seed 0), two or three at a time on one thread each, then `gream eval` with `--set "
    "eval.max_users=null`; SASRec seeds 0-2 of `gream baseline sasrec configs/demo.yaml --config "
    "configs/sasrec_office.json --seed K --set eval.max_users=null`. The chat-prompt recipe the screens compare "
    "with: the same with `--set sft.prompt=chat --set sft.batch_size=32 --set sft.lr=2e-3 --set "
    "sft.weight_average=0.999`; the epoch screens: seed 0 of it with `--set sft.epochs=10 --set sft.lr=4e-3 --set "
    "sft.weight_average=0.997` and with `--set sft.epochs=15 --set sft.weight_average=0.998`. The popularity weight "
    "was chosen on earlier seeds of the chat-prompt recipe, trained on another build of the index and its SASRec "
    "(`runs/demo`'s), where that recipe's valid NDCG@10 median was 0.0667 (0.0626 on this build) and its test "
    "NDCG@10 level with the SASRec's (-0.0018 [-0.0053, +0.0015], BENCHMARKS.md at 9f7e0d8): the build moves the "
    "gap as much as the recipe does. The smaller model: seeds 0-2 of `gream sft configs/demo.yaml --set "
    "model.hidden_size=64 --set model.num_heads=1 --set model.num_layers=1 --set sft.batch_size=128 --set "
    "sft.lr=4e-3` and of the recipe, each on one demo run's index and SASRec, three at a time on one thread each, "
    "then `gream eval` with `--set eval.max_users=null`. The item-token screen: seed 0 of `--set "
    "sft.history_input=item` (also with `--set sft.answer_prefixes=2`, and with that and `--set sft.epochs=10`) on the "
    "same index and SASRec, evaluated alike.",
    {"popularity": "popularity_rerank_office", "size": "sft_small_office", "prompt": "sft_bare_office",
     "epochs": ("sft_epochs10_office", "sft_epochs15_office"),
     "history_input": ("sft_item_office", "sft_item_ap2_office", "sft_item_ap2_e10_office")})
INSTRUMENTS = Catalogue(
    "Instruments",
    {"quality_instruments": "the demo's SFT recipe on Instruments (`configs/instruments_letter.yaml`: LETTER's IDs, "
                            "20 epochs with the average validated on every validation user, the top 10 of a beam of "
                            "50 re-scored by the popularity correction) against the SASRec it distils from",
     "quality_instruments_teacher": "the same SFT models with their beam of 50 re-ranked by that SASRec (seed 0, "
                                    "`eval.rerank` at the weight chosen on validation) instead of the popularity "
                                    "correction, against the SASRec: a system with the SASRec inside, not the SFT "
                                    "model alone"},
    ("quality_instruments", "quality_instruments_teacher"),
    "SASRec seeds 0-2 with the settings of `configs/sasrec_office.json` (above the two trials of a 900 s `gream "
    "baseline sasrec --tune` on validation), every user reported (`--set eval.max_users=null`); SFT seeds 0-2 "
    "(`gream index`, `gream sft` with `sft.seed` = K), distilled from SASRec seed 0, three runs at a time on one "
    "thread each, then `gream eval` with `--set eval.max_users=null`. Its beam width was chosen on the seeds of the "
    "earlier 12-epoch schedule (the widths above). The alpha 0.8 seeds: the same runs with `--set "
    "sft.distill.alpha=0.8`, evaluated alike. The logit adjustment screen: seed 0 with `--set "
    "sft.logit_adjust=0.5`, evaluated with `--set eval.rerank.weight=0`. The temperature screen: seed 0 with `--set "
    "sft.distill.temperature=2.0`, evaluated alike. The item-token screen: seed 0 with `--set sft.history_input=item`, "
    "alone on two threads, evaluated alike. The teacher re-rank: the same SFT models, "
    "`gream eval` with `--set eval.rerank.path=runs/instr/sasrec/seed0/baselines/sasrec --set eval.rerank.weight=1.0`.",
    {"beam": "beam_width_instruments", "popularity": "popularity_rerank_instruments",
     "teacher": "teacher_weight_instruments", "distill": "distill_alpha_instruments",
     "logit_adjust": "logit_adjust_instruments", "temperature": "distill_temperature_instruments",
     "coverage": "beam_coverage_instruments", "history_input": "sft_item_instruments"})

BEAUTY = Catalogue(
    "Beauty",
    {"quality_beauty": "the same recipe on Beauty (`configs/beauty_letter.yaml`: LETTER's IDs, 12 epochs, the top 10 "
                       "of a beam of 50 re-scored by the popularity correction) against the SASRec it distils from"},
    ("quality_beauty",),
    "SASRec seeds 0-2 with the settings of `configs/sasrec_office.json` (above `configs/sasrec_beauty.json` and the "
    "two trials of a 900 s `gream baseline sasrec --tune` on validation); SFT seeds 0-2 (`gream index`, `gream sft` "
    "with `sft.seed` = K), distilled from SASRec seed 0, two or three runs at a time on one thread each, then "
    "evaluated by `benchmarks/sft_seeds.py --spec configs/beauty_letter.yaml --seeds 0 1 2 --set eval.max_users=null`.",
    {"beam": "beam_width_beauty", "popularity": "popularity_rerank_beauty"})


def standing(m: dict) -> str:
    """Where the left model stands against the right by the interval of left - right."""
    return {"higher": "ahead", "lower": "behind", "no difference": "level (interval spans 0)"}[verdict(m)]


def cell(iv: dict, split: str, metric: str, segment: str | None) -> dict | None:
    block = iv["pooled"] if segment is None else iv["segments"].get(segment)
    return None if block is None else block[split]["metrics"][metric]


def rows(cats: tuple[Catalogue, ...], r: dict[str, dict]) -> list[Row]:
    out = []
    for cat in cats:
        for name in (n for n in cat.headline if n in r):
            f, iv = r[name]["figures"], r[name]["intervals"]
            left, right = f["names"]
            for split, metric, segment in COLUMNS[:2]:
                m = cell(iv, split, metric, segment)
                out.append(Row(f"{left} against {right}, {split} NDCG@10, every {cat.name} user, {len(iv['pairs'])} "
                               f"seeds each", f"{left} {f['medians'][f'{left} med'][f'{split} {metric}']:.4f}",
                               f"{right} {f['medians'][f'{right} med'][f'{split} {metric}']:.4f}", interval(m),
                               standing(m)))
    return out


def measured(rec: dict) -> str:
    """A record's name and provenance in a parenthesis's words."""
    m, load = rec.get("machine") or {}, rec.get("load_before")
    n = len(rec.get("changed_files") or ())
    changed = f" with {n} changed file{'s' if n > 1 else ''}" if n else ""
    return (f"`{rec['name']}` measured {rec['date']} at {rec.get('commit') or 'no commit'}{changed}, "
            f"{m.get('cores', '?')} cores, load average {f'{load[0]:.1f}' if load else '?'} at the start")


def width_choice(cat: Catalogue, rec: dict) -> str:
    """A catalogue's beam-width record (benchmarks/beam_width.py) in a sentence's words."""
    f, iv = rec["figures"], rec["intervals"]
    widths = ", ".join(f"{w}: {v['mean_ndcg@10']:.4f}" for w, v in f["widths"].items())
    diffs = "; ".join(f"{k} {interval(v)}" for k, v in iv.items() if not k.startswith(f"width {f['base_width']} "))
    return f"{cat.name} ({f['users']:,} users, {len(f['runs'])} seeds) {widths}; {diffs}; chosen {f['chosen']} ({measured(rec)})"


def weight_choice(word: str, cat: Catalogue, rec: dict) -> str:
    """A catalogue's re-rank weight record (benchmarks/popularity_rerank.py: `word` tau;
    benchmarks/teacher_weight.py: weight) in a sentence's words."""
    f, iv = rec["figures"], rec["intervals"]
    taus = "; ".join(f"{t}: {interval(iv[f'{word} {float(t):g} - {word} 0, all'])} / "
                     f"{interval(iv[f'{word} {float(t):g} - {word} 0, tail'])}" for t in f["taus"] if float(t))
    return (f"{cat.name} ({f['users']:,} users, {f['tail_users']:,} tail, {len(f['runs'])} seeds, beam of {f['width']}) "
            f"{taus}; chosen {f['chosen']:g} ({measured(rec)})")


def setting_choice(cat: Catalogue, rec: dict, level: bool = False) -> str:
    """A catalogue's valid-only comparison of two settings in a sentence's words: the left one is
    taken when it loses nothing on every user and gains on the tail (`level`: loses on neither, for
    a setting that is cheaper)."""
    f, iv = rec["figures"], rec["intervals"]
    left, right = f["names"]
    every, tail = iv["pooled"]["valid"]["metrics"]["ndcg@10"], iv["segments"]["tail"]["valid"]["metrics"]["ndcg@10"]
    tail_ok = verdict(tail) != "lower" if level else verdict(tail) == "higher"
    chosen = left if verdict(every) != "lower" and tail_ok else right
    seeds = len(iv["pairs"])
    return (f"{cat.name} ({iv['pooled']['valid']['users']:,} users, {seeds} seed{'s' * (seeds > 1)} each) {left} - {right}: "
            f"{interval(every)} / {interval(tail)}, medians {f['medians'][f'{left} med']['valid ndcg@10']:.4f} against "
            f"{f['medians'][f'{right} med']['valid ndcg@10']:.4f}; chosen {chosen} ({measured(rec)})")


def coverage_note(cat: Catalogue, rec: dict) -> str:
    """A catalogue's beam-coverage record (benchmarks/beam_coverage.py) in a sentence's words."""
    f, iv = rec["figures"], rec["intervals"]
    left, right = f["names"]
    metric = f"recall@{f['depth']}"
    split = next(iter(iv["all"]))
    parts = "; ".join(f"{seg} {f['recall'][left][split][seg]:.4f} against {f['recall'][right][split][seg]:.4f}, "
                      f"{interval(iv[seg][split]['metrics'][metric])}" for seg in ("all", "head", "tail") if seg in iv)
    return (f"{cat.name} ({iv['all'][split]['users']:,} {split} users, {f['seeds'][0]} seeds each), {left} / {right}, "
            f"Recall@{f['depth']}: {parts} ({measured(rec)})")


# The choices made on validation and the diagnoses, in the order they read: the kind (a key of
# Catalogue.notes), the lead of its sentence, and how a record of it reads.
CHOICES = (
    ("beam", "Beam width (`eval.beam_width`, `benchmarks/beam_width.py`), chosen per catalogue on every validation "
             "user; valid NDCG@10 averaged over the SFT seeds, by width: ", width_choice),
    ("popularity", "Popularity correction (`eval.rerank.path: popularity`, `benchmarks/popularity_rerank.py`), "
                   "chosen on every validation user: valid NDCG@10 against tau 0 (the beam's own order), every user "
                   "/ tail, by weight tau; the choice is the best tail among the weights with no loss on every user. ",
     partial(weight_choice, "tau")),
    ("teacher", "Teacher re-rank (`eval.rerank.path`: the SASRec the SFT model distils from, `benchmarks/teacher_weight.py`), "
                "its weight chosen on every validation user: valid NDCG@10 against weight 0 (the beam's own order), every "
                "user / tail, by weight; the choice is the highest on every user. ", partial(weight_choice, "weight")),
    ("distill", "Distillation weight (`sft.distill.alpha`, `benchmarks/quality.py --splits valid`), chosen on every "
                "validation user: valid NDCG@10, every user / tail; the larger weight is taken when it loses nothing "
                "on every user and gains on the tail. ", setting_choice),
    ("logit_adjust", "Popularity logit adjustment in training (`sft.logit_adjust`, `benchmarks/quality.py --splits "
                     "valid`), screened on every validation user against the recipe with its popularity correction: "
                     "valid NDCG@10, every user / tail; taken on the same rule. ", setting_choice),
    ("temperature", "Teacher temperature (`sft.distill.temperature`, `benchmarks/quality.py --splits valid`): a softer "
                    "teacher spreads its mass over more items, rarer ones among them; screened on every validation "
                    "user against the recipe's 1: valid NDCG@10, every user / tail; taken on the same rule. ",
     setting_choice),
    ("size", "A smaller model for the training time (64 wide, one layer of one head, batches of 128 at twice the "
             "learning rate: a quarter of the recipe's steps, each cheaper), screened on every validation user against "
             "the recipe: valid NDCG@10, every user / tail; taken on the same rule. ", setting_choice),
    ("history_input", "One token per history item (`sft.history_input: item`: an `<item_N>` row per item, initialised "
                      "from its SID codes' rows, with a softmax over the items at each history target, distilled; "
                      "answers stay SIDs), for fewer input tokens and a row of its own for every item, as SASRec has; "
                      "screened on every validation user against the recipe: valid NDCG@10, every user / tail; taken "
                      "on the same rule. ", setting_choice),
    ("prompt", "Bare prompts in batches of 64 for the training time (`sft.prompt: bare`: one end-of-turn token and "
               "the history's SIDs, no template words, the answer read where every history item's successor trains; "
               "`sft.batch_size: 64` at 1.4 times the learning rate, the average's decay 0.998 for half the steps), "
               "against the chat-prompt recipe: valid NDCG@10, every user / tail; taken when it loses on neither. ",
     partial(setting_choice, level=True)),
    ("epochs", "Fewer epochs for the training time (chat prompts in batches of 32: 10 epochs at twice the learning "
               "rate, 15 at the recipe's, the average's decay 0.997 and 0.998 for the fewer steps), screened at one "
               "seed against the recipe's 30: valid NDCG@10, every user / tail; taken when it loses on neither. ",
     partial(setting_choice, level=True)),
    ("coverage", "Where the tail gap comes from (`benchmarks/beam_coverage.py`): the targets each model holds anywhere "
                 "in its ranked list (the SFT model's beam, the SASRec's first as many items), out of reach of any "
                 "re-ranking when missing; each model's mean over its seeds, then the difference [95%]. ", coverage_note),
)


def names(note: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return (note,) if isinstance(note, str) else note or ()


def choice_notes(cats: tuple[Catalogue, ...], r: dict[str, dict]) -> list[str]:
    """One paragraph on the choices on validation that every catalogue's records hold, then their commands."""
    texts, commands = [], []
    for kind, lead, describe in CHOICES:
        shown = [(cat, r[name]) for cat in cats for name in names(cat.notes.get(kind)) if name in r]
        if shown:
            texts.append(lead + "; ".join(describe(cat, rec) for cat, rec in shown) + ".")
            commands += [rec["command"] for _, rec in shown]
    return [" ".join(texts), "", *(f"    {c}" for c in commands), ""] if texts else []


def body(cats: tuple[Catalogue, ...], r: dict[str, dict]) -> str:
    shown = [(cat, n) for cat in cats for n in cat.records if n in r]
    models: dict[str, dict] = {}
    diffs = []
    for cat, name in shown:
        f, iv = r[name]["figures"], r[name]["intervals"]
        for label in f["names"]:
            models.setdefault(f"{cat.name}: {label}", f["medians"][f"{label} med"])
        diffs.append([f"{cat.name}: {f['names'][0]} - {f['names'][1]}",
                      *(interval(m) if (m := cell(iv, *c)) else "-" for c in COLUMNS)])
    medians = [[label, *(f"{m[f'{split} {metric}']:.4f}" for split, metric, _ in COLUMNS[:3])] for label, m in models.items()]
    sizes = "; ".join(f"{cat.name} " + ", ".join(f"{split} {n:,}" for split, n in r[name]["figures"]["split_sizes"].items())
                      for cat, name in shown if name == next(iter(cat.records)))
    parts = ["Does the generative model rank as well as a tuned SASRec? Every user of both splits "
             f"({sizes}), 3 seeds of each model; per user, each model's metric averaged over its seeds, then the "
             "bootstrap interval of the difference (users resampled, the seed noise averaged out). Segments "
             "(`indexing/segments.py`): tail = targets outside the 20% most bought items, long = users above the "
             "median history. The comparisons: "
             + "; ".join(f"{cat.name}, {cat.records[n]} (`{n}`)" for cat, n in shown) + ".", "",
             table(["model (median of seeds)", "valid NDCG@10", "test NDCG@10", "test Recall@10"], medians), "",
             table(["difference [95%]", "valid NDCG@10", "test NDCG@10", "test Recall@10", "tail test NDCG@10",
                    "long test NDCG@10"], diffs), ""]
    parts += ["Results (`benchmarks/results/`): " + "; ".join(measured(r[name]) for _, name in shown) + ".", "",
              *(f"    {r[name]['command']}" for _, name in shown), ""]
    parts += choice_notes(cats, r)
    parts.append(" ".join(f"{cat.name}: {cat.runs}" for cat in cats if any(c is cat for c, _ in shown)))
    return "\n".join(parts)


CATALOGUES = (OFFICE, INSTRUMENTS, BEAUTY)
QUALITY_SECTIONS = [Section("SFT quality against the tuned SASRec: Office, Instruments and Beauty", "quality_office",
                            partial(rows, CATALOGUES), partial(body, CATALOGUES),
                            uses=tuple(n for cat in CATALOGUES for n in (*cat.records, *(
                                m for note in cat.notes.values() for m in names(note))) if n != "quality_office"))]
