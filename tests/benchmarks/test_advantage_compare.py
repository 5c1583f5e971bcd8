"""benchmarks/advantage_compare.py: the table from tiny metrics and eval files (pure, no runs)."""
import json

from benchmarks.advantage_compare import (
    column,
    dropped_shares,
    format_table,
    main,
    median_column,
    reward_windows,
)


def step(n, reward, miss=0.5, hit=0.0, constant=0.1, hit_rate=0.01):
    return {"step": n, "reward/mean": reward, "dropped/all_miss": miss, "dropped/all_hit": hit,
            "dropped/constant": constant, "hit_rate": hit_rate}


EVAL = {split: {"recall@10": 0.07, "ndcg@10": 0.035, "pass@1": 0.004, "pass@5": 0.02, "pass@10": 0.03, "users": 20}
        for split in ("valid", "test")}


def test_reward_windows_with_a_short_last_block_and_nulls():
    records = [step(i, float(i)) for i in range(1, 26)]
    records[3]["reward/mean"] = None
    windows = reward_windows(records, 10)
    assert list(windows) == ["steps 1-10", "steps 11-20", "steps 21-25"]
    assert windows["steps 1-10"] == sum(i for i in range(1, 11) if i != 4) / 9
    assert windows["steps 21-25"] == 23.0


def test_dropped_shares_are_step_means():
    shares = dropped_shares([step(1, 0.1, miss=0.8, hit=None), step(2, 0.1, miss=0.6, hit=None)])
    assert shares["all_miss"] == 0.7 and shares["all_hit"] is None and shares["constant"] == 0.1


def test_one_table_with_an_sft_column_without_training_rows():
    cols = {"sft": column(None, EVAL, 10), "srpo": column([step(1, 0.02), step(2, 0.04)], EVAL, 10),
            "grpo": column([step(1, 0.03)], None, 10)}
    table = format_table(cols, "title").splitlines()
    assert table[0] == "title" and table[1].split() == ["sft", "srpo", "grpo"]
    rows = {line.split("  ")[0].strip(): line.split()[-3:] for line in table[2:]}
    assert rows["reward steps 1-2"] == ["-", "0.0300", "-"]
    assert rows["reward steps 1-1"] == ["-", "-", "0.0300"]
    assert rows["dropped all_miss"] == ["-", "0.5000", "0.5000"]
    assert rows["test recall@10"] == ["0.0700", "0.0700", "-"]
    assert "valid pass@5" in rows and "test pass@10" in rows


def test_median_column_over_runs_skips_missing_values():
    cols = [{"a": 0.1, "b": None}, {"a": 0.3, "c": 2.0}, {"a": 0.2, "b": 4.0}]
    assert median_column(cols) == {"a": 0.2, "b": 4.0, "c": 2.0}
    assert median_column([{"a": None}]) == {"a": None}


def test_table_only_reads_an_out_dir_with_medians_over_seeds(tmp_path, capsys):
    (tmp_path / "base" / "sft").mkdir(parents=True)
    (tmp_path / "base" / "sft" / "eval.json").write_text(json.dumps(EVAL))
    for seed, scale in ((0, 1.0), (1, 3.0), (2, 2.0)):
        rl = tmp_path / "srpo" / f"seed{seed}" / "rl"
        rl.mkdir(parents=True)
        (rl / "metrics.jsonl").write_text("".join(json.dumps(step(i, 0.01 * i * scale)) + "\n" for i in (1, 2, 3)))
        (rl / "eval.json").write_text(json.dumps({**EVAL, "test": {**EVAL["test"], "recall@10": 0.05 * scale}}))
    assert main(["--table-only", "--out", str(tmp_path), "--advantages", "srpo", "grpo", "--steps", "3",
                 "--seeds", "0", "1", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("reward steps 1-3"))
    assert line.split()[-3:] == ["-", "0.0400", "-"]  # median of 0.02, 0.06, 0.04
    assert next(x for x in out if x.startswith("test recall@10")).split()[-3:] == ["0.0700", "0.1000", "-"]
    per_seed = out[out.index("test recall@10 per RL seed"):]
    assert next(x for x in per_seed if x.startswith("seed 1")).split()[-2:] == ["0.1500", "-"]
