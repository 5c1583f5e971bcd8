"""A launch that trains its own teacher: the `sasrec` stage runs before the stages that name its
folder (here eval.rerank), whose checks wait for it instead of refusing a teacher not yet trained;
a teacher folder that this launch does not train is still refused before the first stage."""
from __future__ import annotations

import json

import pytest

from cluster.errors import BadRequest
from cluster.rerank_spec import RerankSpec
from cluster.spec import SasrecStageSpec
from gream.launch import launch
from tests.eval_fixtures import one_thread
from tests.rl_fixtures import rl_test_spec, stage_inputs

pytestmark = pytest.mark.heavy  # Ray, a SASRec and a beam evaluation


def teacher_spec(tmp_path, rerank_path):
    settings = tmp_path / "sasrec.json"
    settings.write_text(json.dumps({"max_epochs": 1, "batch_size": 256, "lr": 3e-3}))
    spec = rl_test_spec(tmp_path / "run")
    rerank = RerankSpec(path=str(rerank_path or spec.layout.stage("sasrec")), weight=0.5, width=20)
    return spec.model_copy(update={
        "stages": ["sasrec", "eval"], "sasrec": SasrecStageSpec(config=str(settings), seed=1),
        "eval": spec.eval.model_copy(update={"max_users": 8, "backend": "torch", "rerank": rerank})})


def test_the_sasrec_stage_trains_the_teacher_that_eval_reranks_with(ray_cluster, tiny_policy, tmp_path):
    spec = teacher_spec(tmp_path, None)
    assert spec.trains_teacher(spec.eval.rerank.path)
    stage_inputs(spec, tiny_policy)
    with one_thread():
        launch(spec)
    teacher = spec.layout.stage("sasrec")
    assert teacher == spec.run_path / "baselines" / "sasrec"
    assert json.loads((teacher / "stage.json").read_text())["stage"] == "sasrec"
    assert json.loads((teacher / "scorer.json").read_text())["config"]["seed"] == 1  # the section's seed
    result = json.loads((spec.layout.stage("sft") / "eval.json").read_text())
    assert result["meta"]["rerank"]["path"] == str(teacher) and result["test"]["users"] == 8


def test_a_teacher_path_in_the_run_follows_the_run_folder(tmp_path):
    from cluster.spec import JobSpec

    spec = JobSpec(name="x", run_dir=str(tmp_path / "a"), stages=["sasrec", "sft"],
                   sft={"distill": {"path": "${run_dir}/baselines/sasrec"}}, eval={"rerank": {"path": "${run_dir}/t"}})
    assert spec.sft.distill.path == str(tmp_path / "a/baselines/sasrec") and spec.eval.rerank.path == str(tmp_path / "a/t")
    assert spec.trains_teacher(spec.sft.distill.path) and not spec.trains_teacher(spec.eval.rerank.path)


def test_a_teacher_this_launch_does_not_train_is_refused_before_any_stage(tmp_path):
    spec = teacher_spec(tmp_path, tmp_path / "elsewhere")
    assert not spec.trains_teacher(spec.eval.rerank.path)
    with pytest.raises(BadRequest, match="eval.rerank.path"):
        launch(spec)
    assert not spec.layout.stage("sasrec").exists()
