"""Job spec validation: typed sections, key-path errors, overrides, the shipped configs."""
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["demo", "smollm2-office", "qwen3-4b-beauty"])
def test_shipped_configs_validate(name):
    spec = load_spec(ROOT / "configs" / f"{name}.yaml")
    assert spec.name == name
    assert spec.run_path.name == name


def test_stable_key_paths_exist():
    spec = load_spec(ROOT / "configs/demo.yaml")
    for path in ["name", "run_dir", "data.path", "data.name", "data.split", "data.max_history", "index.levels",
                 "index.codes", "index.balanced", "model.backbone", "sft.epochs", "rl.steps", "rl.group_size",
                 "rl.prompts_per_step", "rl.advantage", "rl.mode", "cluster.rollout.num_workers",
                 "cluster.sft.num_ranks", "cluster.learner.num_ranks", "cluster.reward.replicas", "sft.autocast",
                 "sft.weight_decay", "checkpoint.every", "checkpoint.keep",
                 "checkpoint.best_metric", "checkpoint.best_mode", "checkpoint.select", "sasrec.config", "sasrec.seed"]:
        node = spec
        for part in path.split("."):
            node = getattr(node, part)


def _write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_misspelt_key_names_path_file_and_suggestion(tmp_path):
    p = _write(tmp_path, "name: x\nrl:\n  group_sise: 4\n")
    with pytest.raises(SpecError) as err:
        load_spec(p)
    msg = str(err.value)
    assert str(p) in msg and "rl.group_sise" in msg and "rl.group_size" in msg


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(SpecError, match=r"rl\.steps"):
        load_spec(_write(tmp_path, "name: x\nrl: {steps: many}\n"))
    with pytest.raises(SpecError, match=r"rl\.group_size.*greater than or equal to 2"):
        load_spec(_write(tmp_path, "name: x\nrl: {group_size: 1}\n"))
    with pytest.raises(SpecError, match=r"rl\.advantage.*'srpo', 'grpo', 'dr_grpo' or 'pairwise'"):
        load_spec(_write(tmp_path, "name: x\nrl: {advantage: ppo}\n"))


CROSS_FIELD = [
    ("sft: {answer_prefixes: 1, history_loss: false}", r"sft.*answer_prefixes.*history_loss"),
    ("sft: {weight_average: 0.99, zero_stage: 3}",
     r"sft.*weight_average needs the full weights on every rank; use zero_stage <= 2"),
    ("rl: {reward: beam, mode: direct}", r"rl.*Rollout-Beam.*reasoning"),
    ("rl: {max_staleness: 1}", r"rl.*max_staleness 1 trains on completions of older weights; set tis_cap"),
    ("index: {scheme: flexcode, collaborative: {weight: 0.5}}",
     r"index.*scheme flexcode has a collaborative codebook of its own"),
    ("index: {scheme: flexcode, flexcode: {cf_quantiles: [0.8, 0.5]}}",
     r"cf_quantiles.*expected ascending values strictly between 0 and 1"),
    ("index: {levels: 2, scheme: flexcode, flexcode: {cf_quantiles: [0.2, 0.5, 0.8]}}",
     r"cf_quantiles has 3 entries, more than the 2 tokens"),
]


@pytest.mark.parametrize("section, message", CROSS_FIELD)
def test_cross_field_checks_name_the_section(tmp_path, section, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, f"name: x\n{section}\n"))


def test_missing_name_and_malformed_yaml(tmp_path):
    with pytest.raises(SpecError, match="missing required key 'name'"):
        load_spec(_write(tmp_path, "rl: {steps: 3}\n"))
    with pytest.raises(SpecError, match=r"malformed YAML at line 4, column 6"):
        load_spec(_write(tmp_path, "name: x\nrl:\n  steps: 3\n   lr: 1\n"))


def test_overrides_parse_scalars_and_validate(tmp_path):
    spec = load_spec(ROOT / "configs/demo.yaml", ["rl.steps=5", "data.split=temporal", "eval.ks=[1,5]"])
    assert spec.rl.steps == 5 and spec.data.split == "temporal" and spec.eval.ks == [1, 5]
    with pytest.raises(SpecError, match="rl.stepz"):
        load_spec(ROOT / "configs/demo.yaml", ["rl.stepz=5"])
    with pytest.raises(SpecError, match="must look like key.path=value"):
        load_spec(ROOT / "configs/demo.yaml", ["rl.steps"])


def test_cli_exit_code_2_on_bad_spec(tmp_path):
    p = _write(tmp_path, "name: x\ndata:\n  splt: loo\n")
    res = subprocess.run([sys.executable, "-m", "gream.cli", "config", "show", str(p)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert "data.splt" in res.stderr and str(p) in res.stderr and "data.split" in res.stderr


def test_cli_config_show_resolves_overrides():
    res = subprocess.run([sys.executable, "-m", "gream.cli", "config", "show", "configs/demo.yaml",
                          "--set", "rl.steps=7"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "steps: 7" in res.stdout and "group_size: 8" in res.stdout



def test_evaluation_covers_every_user_and_sft_validation_is_off_by_default(tmp_path):
    spec = load_spec(_write(tmp_path, "name: x\n"))
    assert spec.eval.max_users is None  # the protocol: every user of valid and test
    assert (spec.sft.eval_every, spec.sft.eval_users) == (0, 500)
    assert load_spec(_write(tmp_path, "name: x\nrl:\n  eval_users: all\n")).rl.eval_users == "all"
    with pytest.raises(SpecError, match="key 'rl.eval_users'"):
        load_spec(_write(tmp_path, "name: x\nrl:\n  eval_users: some\n"))
    with pytest.raises(SpecError, match="ce_coef trains the target SID right after the prompt"):
        load_spec(_write(tmp_path, "name: x\nrl:\n  mode: reasoning\n  ce_coef: 0.1\n"))
    with pytest.raises(SpecError, match="pg_coef 0 and ce_coef 0 leave nothing to train"):
        load_spec(_write(tmp_path, "name: x\nrl:\n  pg_coef: 0\n"))
    with pytest.raises(SpecError, match="inject_target"):
        load_spec(_write(tmp_path, "name: x\nrl:\n  mode: reasoning\n  inject_target: true\n"))
    with pytest.raises(SpecError, match="key 'eval.backend'"):
        load_spec(_write(tmp_path, "name: x\neval:\n  backend: tpu\n"))
    with pytest.raises(SpecError, match="key 'sft.eval_users'"):
        load_spec(_write(tmp_path, "name: x\nsft:\n  eval_users: 0\n"))
