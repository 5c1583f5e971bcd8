"""BENCHMARKS.md's sections: for each question, the summary row and the section body, both written
from results records (benchmarks/results/*.json). What a section says in words is what the method
of its script fixes (what is compared, how, what limits it); every figure comes from its records."""
from __future__ import annotations

import statistics

from benchmarks.report_md import Row, Section, figure, interval, provenance, spread, table, verdict
from benchmarks.report_quality import QUALITY_SECTIONS
from benchmarks.report_runtime import RUNTIME_SECTIONS
from benchmarks.report_stage_time import STAGE_TIME_SECTION, seconds


# --------------------------------------------------------------------------- RL over SFT
def best(curve: dict) -> float:
    return max(curve["val_ndcg@10"].values())


def control_pairs(iv: dict) -> dict[str, str]:
    """recipe -> its equal-compute control, for the pairs the record holds intervals of ("A - B")."""
    return dict(key.split(" - ") for key in iv if " - " in key)


def rl_rows(r: dict[str, dict]) -> list[Row]:
    f, iv = r["rl_gain"]["figures"], r["rl_gain"]["intervals"]
    sft = f["sft"]["test ndcg@10"]
    pairs = control_pairs(iv)
    rows = []
    for recipe, rec in f["recipes"].items():
        m = iv[recipe]["test"]["metrics"]["ndcg@10"]
        seeds = len(rec["seeds"])
        if recipe.endswith("_sft") or recipe in pairs.values():  # an equal-compute control: no target of its own
            question, status = (f"CE-only control {recipe} (the same targets and steps, no policy gradient) against "
                                f"the SFT model, test NDCG@10, every user, {seeds} seeds"), f"measured: {verdict(m)}"
        else:
            question = (f"RL ({recipe}) beats the SFT model on test NDCG@10, every user, {seeds} seeds, paired "
                        "interval above 0")
            status = "met" if m["low"] > 0 else "not met"
        rows.append(Row(question, f"{recipe} {rec['median']['test ndcg@10']:.4f}", f"SFT {sft:.4f}", interval(m),
                        status))
    for recipe, control in pairs.items():
        m = iv[f"{recipe} - {control}"]["test"]["metrics"]["ndcg@10"]
        rows.append(Row(f"RL ({recipe}) beats its equal-compute control ({control}) on test NDCG@10, every user, "
                        "paired interval above 0", f"{recipe} {f['recipes'][recipe]['median']['test ndcg@10']:.4f}",
                        f"{control} {f['recipes'][control]['median']['test ndcg@10']:.4f}", interval(m),
                        "met" if m["low"] > 0 else "not met"))
    return rows


def rl_body(r: dict[str, dict]) -> str:
    g = r["rl_gain"]
    f, iv = g["figures"], g["intervals"]
    screen = r.get("rl_gain_screen", {}).get("figures", {}).get("recipes", {})
    recipes = {**screen, **f["recipes"]}
    curves = [[recipe, str(len(rec["curves"])), " / ".join(f"{best(c):.4f}" for c in rec["curves"].values()),
               " / ".join(str(c["selected_step"]) for c in rec["curves"].values())] for recipe, rec in recipes.items()]
    shown = (("valid", "ndcg@10"), ("test", "ndcg@10"), ("test", "recall@10"), ("test", "recall@5"))
    pairs = control_pairs(iv)
    diffs = [[f"{recipe} - SFT ({len(f['recipes'][recipe]['seeds'])} seeds)",
              *(interval(iv[recipe][split]["metrics"][m]) for split, m in shown)] for recipe in f["recipes"]]
    diffs += [[f"{recipe} - {control}", *(interval(iv[f"{recipe} - {control}"][split]["metrics"][m]) for split, m in shown)]
              for recipe, control in pairs.items()]
    controls = "; ".join(f"`{c}` is the equal-compute control of `{rcp}`" for rcp, c in pairs.items()) or (
        "`beam_inject_sft` is the equal-compute control of `beam_inject_pairwise`")
    out = [
        "Does RL post-training raise the demo SFT model's ranking on held-out users, beyond what the same "
        "training compute spent on cross-entropy gives? Each recipe is `gream rl` from the demo's SFT model "
        "(`runs/demo`), validated every 10 steps on every validation user; `rl/model` is the validation-"
        "selected checkpoint (step 0 = the SFT weights). Recipes are overrides of the demo spec "
        f"(`benchmarks/rl_gain.py`, `RECIPES`); {controls}: the same rollouts, groups, targets and steps with "
        "`rl.pg_coef=0`.",
        "", provenance(g), ""]
    if "rl_gain_screen" in r:
        out += ["Single-seed screens of the other recipes, m" + provenance(r["rl_gain_screen"])[1:], ""]
    out += [figure("rl_validation.png", "RL validation curves against the SFT model"), "",
            table(["recipe", "seeds", "best validation NDCG@10 per seed", "selected step per seed"], curves), "",
            f"SFT model: validation NDCG@10 {f['sft']['valid ndcg@10']:.4f}; test NDCG@10 "
            f"{f['sft']['test ndcg@10']:.4f}, Recall@10 {f['sft']['test recall@10']:.4f}. Every user of both splits, "
            "each run's selected checkpoint, per-user differences (to the SFT model, or a recipe to its control) "
            "averaged over each side's seeds, 95% bootstrap intervals (users resampled):", "",
            table(["difference", "valid NDCG@10", "test NDCG@10", "test Recall@10", "test Recall@5"], diffs), "",
            "On test, against the SFT model: " + "; ".join(
                f"{recipe} NDCG@10 {verdict(iv[recipe]['test']['metrics']['ndcg@10'])}" for recipe in f["recipes"])
            + "." + gate_shares(recipes), "",
            figure("rl_reward.png", "Reward by step"), figure("rl_kept.png", "Kept groups by step"), "",
            "Limits: the embedded 0.9M-parameter policy; a recipe whose groups are repaired with the target trains "
            "mostly on that target, as its CE-only control does; `ce_only` trains the targets of the groups dynamic "
            "sampling keeps (rule rewards that differ), a teacher recipe those of nearly every group, at the same "
            "number of groups per step."]
    return "\n".join(out)


def gate_shares(recipes: dict) -> str:
    """The share of groups each gated teacher recipe's gate opened to (rl.teacher.gate), median over
    steps, and which gate won on validation (seed 0's best NDCG@10, the seed every screen has)."""
    shares = {recipe: statistics.median(v for c in rec["curves"].values() for v in c.get("gate_open", {}).values())
              for recipe, rec in recipes.items() if any(c.get("gate_open") for c in rec["curves"].values())}
    if not shares:
        return ""
    gated = {recipe: round(best(rec["curves"]["seed0"]), 4) for recipe, rec in recipes.items()
             if recipe.startswith("teacher_rank") and "seed0" in rec["curves"]}
    top = max(gated.values())
    return (" Groups that the teacher's reward reached (`teacher/gate_open`, median over steps): "
            + "; ".join(f"{recipe} {share:.0%}" for recipe, share in shares.items())
            + ". The gates on validation (seed 0's best NDCG@10): "
            + "; ".join(f"{recipe} {v:.4f}" for recipe, v in gated.items())
            + "; best (to 4 places): " + ", ".join(r for r, v in gated.items() if v == top) + ".")


# --------------------------------------------------------------------------- control (c)
def rerank_section(name: str, title: str, model: str) -> Section:
    """The generate-then-re-rank record `name`, whose SFT model `model` names."""

    def rows(r: dict[str, dict]) -> list[Row]:
        f, iv = r[name]["figures"], r[name]["intervals"]["test"]
        t = f["test_chosen"]
        return [Row(f"{model} beam re-ranked by the teacher SASRec, against the SASRec, test NDCG@10",
                    f"re-ranked beam {t['reranked']['ndcg@10']:.4f}", f"SASRec {t['sasrec']['ndcg@10']:.4f}",
                    interval(iv["reranked_minus_sasrec"]["ndcg@10"]), "measured: the bar for a teacher-reward RL recipe")]

    def body(r: dict[str, dict]) -> str:
        rec = r[name]
        f, iv = rec["figures"], rec["intervals"]
        weights = ", ".join(f"{w}: {m['ndcg@10']:.4f}" for w, m in f["valid"].items())
        table_rows = []
        for split, metric in (("valid", "ndcg@10"), ("test", "ndcg@10"), ("test", "recall@10"), ("test", "recall@1")):
            c, d = f[f"{split}_chosen"], iv[split]
            table_rows.append([f"{split} {metric}", f"{c['reranked'][metric]:.4f}", f"{c['sft_beam'][metric]:.4f}",
                               f"{c['sasrec'][metric]:.4f}", interval(d["reranked_minus_sft"][metric]),
                               interval(d["reranked_minus_sasrec"][metric])])
        first = name == "teacher_rerank"  # the other re-rank section reads as its sequel
        intro = (f"Does the teacher's knowledge help at inference, without RL? {model}'s torch beam of width "
                 f"{f['width']} on every user of both splits (`{f['base']}`), each candidate re-scored by policy "
                 "sequence log p + w x SASRec log p(item | history) (`rl_system/rerank.py`, `eval.rerank`); the SASRec "
                 "is the teacher of the RL recipes (`configs/sasrec_office.json`, seed 0). The weight is chosen on "
                 "every validation user, test read once." if first else
                 f"As in the section above, from {model[0].lower() + model[1:]}'s beam of width {f['width']} (`{f['base']}`).")
        return "\n".join([intro, "", provenance(rec), "",
            f"Validation NDCG@10 by weight (inf: the teacher alone within the beam): {weights}; chosen "
            f"w = {f['chosen_weight']}. Paired per-user bootstrap, {f['test_chosen']['users']:,} users each:", "",
            table(["split", "re-ranked", "SFT beam (w = 0)", "SASRec", "re-ranked - SFT", "re-ranked - SASRec"],
                  table_rows), "",
            *([figure("rl_test.png", "What beats the SFT model on test"), "",
               "SASRec's figures are its own catalogue ranks on every user, checked against its `ranks.json`. "
               "Limits: one SFT seed and one SASRec seed; the seed spread is not measured."] if first else [])]).rstrip()

    return Section(title, name, rows, body)


# --------------------------------------------------------------------------- objectives
OBJECTIVES = {"tail": "a bonus on hits and near hits by the item's novelty",
              "novelty": "every completion earns its item's novelty, hit or not",
              "head_exposure": "a penalty on misses naming head items beyond their training share",
              "diversity": "each completion's share of its group's distinct SID prefixes"}
TAIL_SHOWN = (("ndcg@10", "NDCG@10"), ("tail_share@10", "tail share of the top 10"), ("tail recall@10", "tail Recall@10"))


def objectives_rows(r: dict[str, dict]) -> list[Row]:
    f, iv = r["objectives"]["figures"], r["objectives"]["intervals"]
    chosen, margin = f["chosen"]["weight"], f["chosen"]["margin"]
    seeds = len(r["objectives"]["settings"]["seeds"])
    question = (f"the {f['objective']} reward (weight chosen on validation) raises tail Recall@10 and the tail share of "
                f"the top 10 over the SFT model, test NDCG@10 non-inferior (interval above -{margin}), every user, {seeds} seeds")
    if chosen is None:
        return [Row(question, "no weight kept validation NDCG@10 non-inferior", "SFT model", "-", "not met")]
    d, sft, got = iv[chosen]["test"], f["sft"]["test"], f["weights"][chosen]["figures"]["test"]
    met = d["tail_share@10"]["low"] > 0 and d["tail recall@10"]["low"] > 0 and d["ndcg@10"]["low"] > -margin
    return [Row(question, f"weight {chosen}: tail share {got['tail_share@10']:.3f}, tail R@10 {got['tail recall@10']:.4f}",
                f"SFT {sft['tail_share@10']:.3f}, {sft['tail recall@10']:.4f}",
                "; ".join(f"{label} {interval(d[key])}" for key, label in TAIL_SHOWN), "met" if met else "not met")]


def objectives_body(r: dict[str, dict]) -> str:
    rec = r["objectives"]
    f, iv, st = rec["figures"], rec["intervals"], rec["settings"]
    rows = [[f"{w}", split, *(interval(d[split][key]) for key, _ in TAIL_SHOWN),
             f"{f['weights'][w]['figures'][split]['coverage@10']:.4f}"] for w, d in iv.items() for split in ("valid", "test")]
    sft = "; ".join(f"{split}: NDCG@10 {v['ndcg@10']:.4f}, tail share {v['tail_share@10']:.3f}, tail R@10 "
                    f"{v['tail recall@10']:.4f}, coverage@10 {v['coverage@10']:.4f}" for split, v in f["sft"].items())
    return "\n".join([
        "Can RL trade a little accuracy for the long tail, which cross-entropy cannot aim at? From the demo SFT model, "
        f"`gream rl` with the `{f['recipe']}` recipe plus `rl.objectives.{f['objective']}` at each weight "
        f"({OBJECTIVES[f['objective']]}, `rl_system/reward/objectives.py`), seeds " + ", ".join(map(str, st["seeds"]))
        + "; each run's last step; every user of both splits. Differences to the SFT model per user, averaged over the "
        "seeds, 95% bootstrap intervals; tail Recall@10 over the users whose target is a tail item. The weight is "
        f"chosen on validation ({f['chosen']['rule']}): **{f['chosen']['weight']}**.", "", provenance(rec), "",
        f"SFT model: {sft}.", "",
        table([f"{f['objective']} weight", "split", *(f"{label} - SFT" for _, label in TAIL_SHOWN), "coverage@10"], rows), "",
        figure("long_tail_share_valid.png", "NDCG@10 against the tail share, validation"),
        figure("long_tail_share_test.png", "NDCG@10 against the tail share, test"),
        figure("long_tail_recall_valid.png", "NDCG@10 against tail Recall@10, validation"),
        figure("long_tail_recall_test.png", "NDCG@10 against tail Recall@10, test"), "",
        "Limits: one SFT model (the demo's, 0.9M parameters); the in-run validation that draws the curves uses 500 "
        "validation users" + ("; the chosen weight is the largest swept" if f["chosen"]["weight"] == max(
            iv, key=float) else "") + "."])


# --------------------------------------------------------------------------- speed
def beam_rows(r: dict[str, dict]) -> list[Row]:
    f = r["beam_eval"]["figures"]
    s, ratio = f["sides"], f["ratio_to_hf"]["torch"]
    return [Row(f"constrained beam evaluation >= 10x HF's prefix-constrained beam search ({f['users']:,} users, "
                "equal cores)", f"torch beam {s['torch']['median_s']:.2f} s", f"HF generate {s['hf']['median_s']:.2f} s",
                f"{ratio['median']:.2f}x (runs {spread(ratio['runs'])})",
                "met" if min(ratio["runs"]) >= 10 else "not met in every run" if ratio["median"] >= 10 else "not met")]


def beam_body(r: dict[str, dict]) -> str:
    rec = r["beam_eval"]
    f, st = rec["figures"], rec["settings"]
    names = {"torch": "gream torch beam (`eval.backend: torch`, the CPU default)",
             "gream": "gream vLLM trie beam (`eval.backend: vllm`)",
             "hf": f"HF generate + prefix_allowed_tokens_fn, {st.get('threads', '?')} threads"}
    rows = [[names[k], f"{s['median_s']:.2f} [{s['min_s']:.2f}, {s['max_s']:.2f}]", f"{s['users_per_s']:,.0f}",
             (f"{f['ratio_to_hf'][k]['median']:.2f}x ({spread(f['ratio_to_hf'][k]['runs'])})" if k in f["ratio_to_hf"]
              else "1")] for k, s in f["sides"].items() if k in names]
    metrics = f["sides"]["hf"]["metrics"]
    return "\n".join([
        f"Is gream's constrained beam evaluation faster than Hugging Face's? Every Office test user "
        f"({f['users']:,}), width {f['width']}, the demo index (depth {f['depth']}) and the demo spec's SFT model, "
        "float32. HF `generate` and the torch beam run in this process on the same threads; the vLLM beam in its "
        "rollout worker on the same cores. The sides alternate.", "", provenance(rec), "",
        table(["side", "median s [min, max]", "users/s", "ratio to HF (runs)"], rows), "",
        figure("beam_eval.png", "Beam evaluation time per user"), "",
        f"The metrics agree on every run ({'yes' if f['metrics_agree'] else 'NO'}: Recall@10 {metrics['recall@10']:.4f}, "
        f"NDCG@10 {metrics['ndcg@10']:.4f} on each side); each user's target rank is the same on the torch and "
        f"vLLM beams for {f['ranks_identical']:,} of {f['users']:,} users."
        + (" Where the time goes (`--profile`):" if min(f["ratio_to_hf"]["torch"]["runs"]) < 10 else ""), "",
        *([f"    {line}" for line in f["profile"]] + [""] if min(f["ratio_to_hf"]["torch"]["runs"]) < 10 else []),
        "Limits: a 0.9M-parameter model on 2 CPU cores, where the engine's fixed cost per request dominates the "
        "vLLM beam; a larger model on a GPU, where vLLM's batching is expected to pay, was not measured."])


def scaling_rows(r: dict[str, dict]) -> list[Row]:
    f = r["scaling"]["figures"]
    rows = []
    for part, noun in (("rollout", "rollout workers"), ("learner", "learner ranks")):
        if f.get(part):
            one, two = f[part]["1"], f[part]["2"]
            per_run = [a / b for a, b in zip(one["runs_s"], two["runs_s"])]
            rows.append(Row(f"RL {part} throughput with 2 {noun} against 1" + (
                            " (each worker its own core)" if part == "rollout" else " (the same cores in all)"),
                            f"2: {two['completions_per_s']:,.0f} completions/s",
                            f"1: {one['completions_per_s']:,.0f} completions/s",
                            f"{one['median_s'] / two['median_s']:.2f}x (runs {spread(sorted(per_run))})", "measured"))
    return rows


def scaling_body(r: dict[str, dict]) -> str:
    rec = r["scaling"]
    f, st = rec["figures"], rec["settings"]
    rows = [[part, k, f"{v['median_s']:.3f} [{v['min_s']:.3f}, {v['max_s']:.3f}]", f"{v['completions_per_s']:,.0f}"]
            for part in ("rollout", "learner") if f.get(part) for k, v in f[part].items()]
    return "\n".join([
        "Does RL throughput grow with rollout workers and learner ranks on one machine? "
        f"{st['prompts']} training prompts x {st['n']} completions through `RolloutPool.generate` (direct mode, "
        "trie-constrained, each vLLM-CPU engine bound to cores of its own), then one DeepSpeed `train_step` on that "
        f"batch with 1 rank and with 2 ranks sharing {st['learner_cores']} cores; the sides alternate, "
        f"{st['repeats']} repeats, medians.", "", provenance(rec), "",
        table(["part", "workers or ranks", "median s [min, max]", "completions/s"], rows), "",
        figure("scaling.png", "RL throughput against rollout workers and learner ranks"), "",
        "Limits: 2 cores, so at most 2 workers; the learner sides share the same cores, so a second rank adds "
        "parallelism of the model, not cores. Engine bindings: " + "; ".join(st.get("workers") or []) + "."])


def validation_rows(r: dict[str, dict]) -> list[Row]:
    f = r["validation_cost"]["figures"]
    share = f["share"]
    return [Row("RL in-run validation on every validation user <= 15% of the run",
                f"{f['validation_s']:.1f} s of validation", f"{f['wall_s']:.1f} s of RL run",
                f"{share['median']:.1%} [{share['min']:.1%}, {share['max']:.1%}]",
                "met" if share["median"] <= 0.15 else "not met")]


def validation_body(r: dict[str, dict]) -> str:
    rec = r["validation_cost"]
    f = rec["figures"]
    rows = [[str(i + 1), f"{run['wall_s']:.1f}", f"{spread(run['validations_s'])} = {sum(run['validations_s']):.1f}",
             f"{run['share']:.1%}"] for i, run in enumerate(f["runs"])]
    return "\n".join([
        "What does validating on every user cost an RL run? The demo spec's RL stage from its SFT model with "
        "`rl.eval_users: all`, each run a fresh `gream rl` process (Ray, the vLLM engine and DeepSpeed start "
        "inside the wall time); the validations (`time/validate` in `rl/metrics.jsonl`) use the torch beam on the "
        "learner rank.", "", provenance(rec), "",
        table(["run", "wall s", "validations s", "share"], rows), "",
        f"Median {f['share']['median']:.1%} [{f['share']['min']:.1%}, {f['share']['max']:.1%}] of the run. "
        "Limits: the demo's 30 steps with `rl.eval_every: 10`; a longer run validating as often spends the same "
        "share."])


def flexcode_rows(r: dict[str, dict]) -> list[Row]:
    f = r["stage_time_flexcode"]["figures"]["index"]
    return [Row("FlexCode Office index with default settings <= 3 min", f"{seconds(f)} s", "-", "-",
                "met" if seconds(f) <= 180 else "not met")]


def flexcode_body(r: dict[str, dict]) -> str:
    rec = r["stage_time_flexcode"]
    f = rec["figures"]["index"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in f["seconds"].items() if k != "total")
    fc = f.get("flexcode") or {}
    alloc = "; ".join(f"{k} collaborative tokens: {v['items']:,} items ({v['mean_training_interactions']:.1f} mean "
                      "training interactions)" for k, v in fc.get("allocation", {}).items())
    return "\n".join([
        "Does the FlexCode index build in time with its defaults? `index.flexcode.sasrec` at its default (the "
        "settings of `configs/sasrec_office.json`), the collaborative SASRec trained inside the stage.", "",
        provenance(rec), "", f"Wall time {seconds(f)} s ({parts} s). {alloc}.", "",
        "Limits: one run."])


SECTIONS: list[Section] = [
    Section("RL over SFT", "rl_gain", rl_rows, rl_body, uses=("rl_gain_screen",)),
    rerank_section("teacher_rerank", "Generate, then re-rank with the teacher", "The demo SFT model"),
    rerank_section("teacher_rerank_distill", "Generate with the distilled SFT model, then re-rank",
                   "The SFT model distilled from the SASRec (seed 0)"),
    *QUALITY_SECTIONS,
    Section("Long tail: a tail reward against the SFT model", "objectives", objectives_rows, objectives_body),
    Section("Constrained beam evaluation vs Hugging Face generate", "beam_eval", beam_rows, beam_body),
    Section("RL throughput against rollout workers and learner ranks", "scaling", scaling_rows, scaling_body),
    Section("In-run validation on every validation user", "validation_cost", validation_rows, validation_body),
    STAGE_TIME_SECTION,
    Section("FlexCode index on Office with its defaults", "stage_time_flexcode", flexcode_rows, flexcode_body),
    *RUNTIME_SECTIONS,
]

