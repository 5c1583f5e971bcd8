"""BENCHMARKS.md's smaller sections: where the CPU engine lives, where an RL step's time goes,
gream serve under slow clients, and what the teacher knows that the policy does not."""
from __future__ import annotations

from benchmarks.report_md import Row, Section, provenance, spread, table


def engine_rows(r: dict[str, dict]) -> list[Row]:
    sides = r["engine_process"]["figures"]["sides"]
    own, inproc = sides["vLLM's processes"], sides["in the owning process"]
    return [Row(f"CPU rollout engine in its owning process against vLLM's own processes: {what}",
                f"{inproc[key]['median']:.2f} s", f"{own[key]['median']:.2f} s",
                f"{own[key]['median'] / inproc[key]['median']:.2f}x faster", "measured")
            for key, what in (("start_s", "engine start"), ("generate_s", "one RL rollout call"))]


def engine_body(r: dict[str, dict]) -> str:
    rec = r["engine_process"]
    sides, st = rec["figures"]["sides"], rec["settings"]
    rows = [[side, *(f"{v[key]['median']:.2f} ({spread(v[key]['runs'])})" for key in ("start_s", "generate_s", "beam_s"))]
            for side, v in sides.items()]
    return "\n".join([
        "Where should a CPU rollout engine live? The same engine (hidden size "
        f"{st['hidden']}, {st['layers']} layers) started in vLLM's own engine processes and in the process that owns it "
        "(`EngineConfig.in_process`: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, the `uni` executor), then a rollout of "
        f"{st['prompts']} prompts x {st['n']} and a trie beam of width {st['width']}; the sides alternate, "
        f"{st['repeats']} repeats.", "", provenance(rec), "",
        table(["side", "start s (runs)", "rollout s (runs)", "beam s (runs)"], rows), "",
        "Limits: CPU with one rank; GPUs and tensor parallelism keep vLLM's own processes."])


def phase_rows(r: dict[str, dict]) -> list[Row]:
    ph = r["rl_phases"]["figures"]["phases"]
    return [Row("Share of an RL step in rollout / reward / train / weight push (demo spec)",
                " / ".join(f"{ph[k]['share']:.0%}" for k in ("rollout", "reward", "train", "push")),
                "-", f"step median {ph['step']['median_s']:.2f} s", "measured")]


def phase_body(r: dict[str, dict]) -> str:
    rec = r["rl_phases"]
    f = rec["figures"]
    rows = [[k, f"{v['median_s']:.3f}", f"{v['mean_s']:.3f}", f"{v['total_s']:.1f}", f"{v['share']:.1%}"]
            for k, v in f["phases"].items()]
    means = ", ".join(f"{k} {v:,.1f}" for k, v in f["means"].items())
    return "\n".join([
        f"Where does an RL step's time go? The per-phase timers of one run's `rl/metrics.jsonl` (`{f['source']}`: "
        f"the demo spec's 30 steps, one rollout worker, one learner rank), steps {f['first_step']}-{f['last_step']} "
        "(the first step's engine warm-up left out).", "", provenance(rec), "",
        table(["phase", "median s", "mean s", "total s", "share"], rows), "",
        f"Per-step means: {means}. Limits: one run; the learner and the rollout worker share 2 cores."])


def serve_rows(r: dict[str, dict]) -> list[Row]:
    s = r["serve"]["figures"]["slow_vs_alone"][0]
    return [Row(f"gream serve: {s['clients'] - s['slow']} clients' latency beside {s['slow']} slow clients, against "
                "them alone", f"p50 {s['p50_ratio']:.2f}x, p99 {s['p99_ratio']:.2f}x", "1x", f"{s['lost']} requests lost",
                "measured")]


def serve_body(r: dict[str, dict]) -> str:
    rec = r["serve"]
    f = rec["figures"]
    rows = [[str(x["clients"]), str(x["slow"]), f"{x['qps']:.0f}", f"{x['p50_ms']:.0f}", f"{x['p99_ms']:.0f}",
             str(x["lost"])] for x in f["rows"]]
    return "\n".join([
        f"Does a client that never finishes its request hold the others up? `gream serve` on `{f['model']}` "
        f"({f['stage']} stage, top {f['k']}), the well-behaved clients alone and then beside slow ones (half connect "
        "and send nothing, half send the headers and then the body a byte at a time; `benchmarks/serve.py`).", "",
        provenance(rec), "", table(["clients", "of them slow", "requests/s", "p50 ms", "p99 ms", "lost"], rows), "",
        "Limits: one machine, the server and the clients on the same 2 cores."])


def gate_rows(r: dict[str, dict]) -> list[Row]:
    f = r["teacher_gate"]["figures"]
    a = f["segments"]["all"]
    return [Row(f"The teacher ranks the target above the policy's top beam negative ({f['split']}, every user)",
                f"{a['above_top_negative']:.1%} of users", "-", f"above every beam negative: {a['above_all_negatives']:.1%}",
                "measured")]


def gate_body(r: dict[str, dict]) -> str:
    rec = r["teacher_gate"]
    f, st = rec["figures"], rec["settings"]
    def cells(v: dict) -> list[str]:
        return [f"{v['users']:,}", f"{v['above_top_negative']:.1%}", f"{v['above_all_negatives']:.1%}"]

    segs = f["segments"]
    rows = [[seg, *cells(v), *cells(segs[f"{seg}, uncertain"])] for seg, v in segs.items()
            if not seg.endswith(", uncertain")]
    return "\n".join([
        f"Before a teacher reward: how often does the SASRec (`{st['teacher']}`) give the target a higher probability "
        f"than the SFT model's own beam negatives (width {st['width']}), on every {f['split']} user, per segment? "
        f"\"uncertain\": the policy's top candidate holds under {st['uncertain']:.0%} of the beam's probability "
        f"({f['uncertain_share']:.0%} of users), where AdaGRPO's gate would let the teacher act.", "",
        provenance(rec), "", table(["segment", "users", "above the top negative", "above every negative",
                                    "uncertain users", "uncertain: above the top", "uncertain: above every"], rows)])


RUNTIME_SECTIONS = [
    Section("A CPU rollout engine in its owning process", "engine_process", engine_rows, engine_body),
    Section("Where an RL step's time goes", "rl_phases", phase_rows, phase_body),
    Section("gream serve under load", "serve", serve_rows, serve_body),
    Section("What the teacher knows that the policy does not", "teacher_gate", gate_rows, gate_body),
]
