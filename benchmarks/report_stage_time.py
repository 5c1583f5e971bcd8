"""BENCHMARKS.md's section on the demo spec's stage times (benchmarks/stage_time.py), SFT against its
SASRec, with where an SFT step goes (benchmarks/sft_profile.py) and what was tried for the ratio."""
from __future__ import annotations

from benchmarks.report_md import Row, Section, provenance, spread


def row_ms(profile: dict) -> float:
    """An SFT profile's milliseconds per training row."""
    return profile["figures"]["total_ms"] / profile["figures"]["batch"]


def per_row(profile: dict, phase: str) -> float:
    return profile["figures"]["ms"][phase] / profile["figures"]["batch"]


def tried(r: dict[str, dict]) -> list[str]:
    """What cut the step cost and what did not, from the records that hold it."""
    out = []
    if (now := r.get("sft_profile")) and (chat := r.get("sft_profile_chat")):
        c, n = chat["figures"], now["figures"]
        out.append(f"Bare prompts in batches of 64 (`sft.prompt: bare`, the demo's since the screen `sft_bare_office`) "
                   f"against the chat-prompt recipe's batches of 32 (`{chat['name']}`, {chat['date']} at "
                   f"{chat['commit']}, run just before): {n['tokens'] / n['batch']:.1f} tokens a row against "
                   f"{c['tokens'] / c['batch']:.1f}, {row_ms(now):.2f} ms a row against {row_ms(chat):.2f} "
                   f"({1 - row_ms(now) / row_ms(chat):.0%} less; forward with the loss {per_row(now, 'forward'):.2f} "
                   f"against {per_row(chat, 'forward'):.2f} ms a row, the teacher {per_row(now, 'teacher'):.2f} against "
                   f"{per_row(chat, 'teacher'):.2f}). The teacher and the SID loss work per next-item target, which "
                   "bare prompts keep; batches of 64 spread their fixed costs over twice the rows.")
        if item := r.get("sft_profile_item"):
            out.append(f"One token per history item (`sft.history_input: item`, `{item['name']}`, {item['date']} at "
                       f"{item['commit']}) cut a chat-prompt batch of 32 to {item['figures']['tokens']:.0f} tokens and "
                       "lost on validation (`sft_item_office` and its variants).")
    fewer = [f"`{n}`" for n in ("sft_small_office", "sft_epochs10_office", "sft_epochs15_office") if n in r]
    if fewer:
        out.append("Fewer or cheaper steps cost accuracy on every validation user: a 64-wide one-layer model at "
                   "batches of 128, and 10 or 15 epochs instead of 30 (\"SFT quality against the tuned SASRec\", "
                   + ", ".join(fewer) + ").")
    return out


def stage_rows(r: dict[str, dict]) -> list[Row]:
    f = r["stage_time_demo"]["figures"]
    rows = []
    if "index" in f:
        rows.append(Row("Office index (demo spec) <= 3 min", f"{seconds(f['index'])} s", "-", "-",
                        "met" if seconds(f["index"]) <= 180 else "not met"))
    if "sft" in f:
        train = f["sft"].get("train_secs")
        rows.append(Row("SFT on the demo spec <= 15 min", f"{train:.0f} s of training", "-", "-",
                        "met" if train <= 900 else "not met"))
    if "sft_over_sasrec" in f:
        ratios = sorted(f["sft_over_sasrec"])
        median = ratios[len(ratios) // 2]
        rows.append(Row("SFT of the demo spec within 2x the tuned SASRec's training time (same cores, interleaved)",
                        f"SFT {f['sft']['train_secs']:.0f} s", f"SASRec {f['sasrec']['train_secs']:.0f} s",
                        f"{median:.2f}x (runs {spread(f['sft_over_sasrec'])})",
                        "met" if median <= 2 else f"not met: {median / 2:.2f}x the target"))
    return rows


def seconds(stage: dict) -> float:
    """The stage's wall time where it was timed from outside, else its own."""
    return round(stage.get("wall_s") or stage.get("stage_s") or stage["seconds"]["total"], 1)


def stage_body(r: dict[str, dict]) -> str:
    rec = r["stage_time_demo"]
    f = rec["figures"]
    lines = ["How long do the demo spec's stages take, SFT against its SASRec? Each stage from an empty run folder, "
             "the repeats in turn (SASRec and SFT alternate); each figure is the median run.", "", provenance(rec), ""]
    if "index" in f:
        lines.append(f"Index: {seconds(f['index'])} s for {f['index']['items']:,} items (embedding "
                     f"{f['index']['seconds']['embed']:.1f} s).")
    if "sasrec" in f:
        runs = f["sasrec"].get("runs", [f["sasrec"]])  # one run without --repeats
        lines.append(f"SASRec: {f['sasrec']['train_secs']:.0f} s of training (runs "
                     f"{spread([x['train_secs'] for x in runs], '{:.0f}')} s; early stopping chose epochs "
                     f"{spread([x['best_epoch'] for x in runs], '{}')}).")
    if "sft" in f:
        s = f["sft"]
        sel = s.get("selection") or {}
        lines.append(f"SFT: {s['train_secs']:.0f} s of training at {s['tokens_per_s']:,.0f} tokens/s"
                     + (f" (runs {spread([x['train_secs'] for x in s['runs']], '{:.0f}')} s)" if "runs" in s else "")
                     + (f", {seconds(s)} s for the stage" if s.get("stage_s") or s.get("wall_s") else "")
                     + (f"; validation chose epoch {sel['epoch']} by {sel['metric']}" if sel else "") + ".")
    if profile := r.get("sft_profile"):
        p = profile["figures"]
        changed = len(profile.get("changed_files") or [])
        lines += ["", f"Where an SFT step goes (`{profile['command']}`, {profile['date']} at {profile['commit']}"
                  + (f" with {changed} changed files" if changed else "") + f", load {profile['load_before'][0]:.1f}; "
                  f"{p['steps']} steps of batch {p['batch']}, {p['tokens']:.0f} tokens each, alone): "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in p["ms"].items()) + f"; {p['total_ms']:.1f} ms a step. "
                  "Operators by own time: " + ", ".join(f"{k} {v:.0%}" for k, v in p["ops"].items()) + "."]
    if "sft_over_sasrec" in f:
        s = f["sft"]
        lines.append(f"Why the ratio: in twice SASRec's training time SFT would run "
                     f"{2 * f['sasrec']['train_secs'] / s['train_secs'] * s['micro_steps']:,.0f} of its "
                     f"{s['micro_steps']:,} steps at this step cost.")
        if profile:
            model_ms = profile["figures"]["ms"]["forward"] + profile["figures"]["ms"]["backward"]
            model_s = model_ms / 1e3 * s["micro_steps"]
            lines.append(f"Forward and backward with the loss ({model_ms:.1f} ms a step) come to {model_s:.0f} s over "
                         f"those steps: with collation, the teacher and the optimizer step cut to nothing, SFT would "
                         f"still take {model_s / f['sasrec']['train_secs']:.1f}x SASRec's training time.")
        lines += tried(r)
    return "\n".join(lines + ["", "Limits: this machine's times (2 cores, float32); SASRec stops early (patience 5)."])


STAGE_TIME_SECTION = Section("Index, SASRec and SFT time on the demo spec", "stage_time_demo", stage_rows, stage_body,
                             uses=("sft_profile", "sft_profile_chat", "sft_profile_item"))
