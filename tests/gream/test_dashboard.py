"""`gream dashboard` rendered in headless Chromium, `gream status`, and the run reader behind both.

The run directory is written by the real writers: MetricsLog (metrics files), CheckpointManager
(one complete checkpoint and one truncated), write_eval with metrics computed by the real ranking
and pass@k functions; status.json and rl/model/selection.json have the shape the RL driver writes.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import gream.dashboard
from cluster.checkpoint import CheckpointManager
from cluster.control import write_end
from cluster.metrics_log import MetricsLog, read_metrics
from cluster.run_layout import RunLayout
from gream.dashboard import make_server, url_of
from gream.run_state import (
    END_STATES,
    STALE_MIN_S,
    RunDirError,
    driver_state,
    format_status,
    read_jsonl,
    read_run_state,
)
from rl_system.evaluate import pass_at_k, write_eval
from sft.metrics import ranking_metrics

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get update && apt-get install -y chromium"
STEPS = 8
NO_UPDATE_STEP = 3  # a step whose groups were all dropped: no learner metrics, as the driver logs it
VAL_EVERY = 4  # validation on steps 0 (the SFT model), 4 and 8; null on 1-3, absent on 5-7
SELECTED = 4
WINDOW = (1400, 1300)


def step_record(step: int, rng: np.random.Generator) -> dict:
    """One step as rl_system.train._step_record writes it (depth 4: LCP lengths 0..4)."""
    lcp = rng.multinomial(64, [0.4 - 0.03 * step, 0.3, 0.15, 0.1, 0.05 + 0.03 * step]).tolist()
    record = {"reward/mean": 0.2 + 0.05 * step + 0.01 * rng.standard_normal(), "reward/std": 0.2 - 0.01 * step,
              "hit_rate": lcp[-1] / 64, "format_ok": 1.0, "lcp_hist": lcp, "completion_len": 5.0,
              "completions": 64, "dropped/all_miss": 0.5 - 0.04 * step, "dropped/all_hit": 0.01 * step,
              "dropped/constant": 0.05, "kept_groups": 4, "sampled_groups": 8, "sampling_rounds": 1,
              "time/rollout": 1.5 + rng.random(), "time/reward": 0.1, "time/train": 2.0 + rng.random(),
              "time/push": 0.3, "weight_version": step,
              # Up to 1880.64 at step 8: the demo run whose axis label read "880.640" (its "1" cut off).
              "throughput/rollout_tokens_per_s": 600.0 + 160.08 * step}
    record["time/step"] = sum(record[f"time/{p}"] for p in ("rollout", "reward", "train", "push"))
    if step != NO_UPDATE_STEP:
        record.update(kl=0.001 * step, entropy=3.0 - 0.1 * step, clip_fraction=0.01,
                      grad_norm=float("nan") if step == 2 else 0.5, loss=0.1, pg_loss=0.1)
    if step % VAL_EVERY == 0:
        record.update(val_record(step))
    elif step < VAL_EVERY:  # steps without validation may log its keys as null
        record.update(dict.fromkeys(val_record(step)))
    return record


def val_record(step: int) -> dict:
    """Rising to step 4, then falling: the best is not the last. The lists' figures rise throughout."""
    return {"val/recall@10": 0.1 + 0.02 * min(step, 10 - step), "val/ndcg@10": 0.05 + 0.01 * min(step, 10 - step),
            "val/tail_share@10": 0.3 + 0.05 * step, "val/coverage@10": 0.1 + 0.01 * step, "val/novelty@10": 9.0 + step}


def eval_result(rng: np.random.Generator, sampled: bool = True) -> dict:
    """Shaped as rl_system.evaluate writes it; without sampling, as the SASRec baseline does."""
    out = {}
    for split in ("valid", "test"):
        ranked = [rng.permutation(20)[:10].tolist() for _ in range(30)]
        targets = rng.integers(0, 20, 30).tolist()
        metrics = ranking_metrics(ranked, targets, [1, 5, 10])
        if sampled:
            correct = rng.integers(0, 4, 30)
            metrics.update({f"pass@{k}": float(pass_at_k(10, correct, k).mean()) for k in (1, 5, 10)})
            metrics.update(format_ok=1.0, users=30)
        out[split] = metrics
    # Per long-tail segment, as both evaluators write it: not a split, and not a row of the dashboard.
    out["segments"] = {split: {"tail": {**out[split], "users": 12}} for split in ("valid", "test")}
    return out


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    sft = MetricsLog(run / "sft", tensorboard=False)
    for step in (50, 100, 150):
        sft.write(step, {"phase": "align", "loss_align": 3.0 - step / 100, "tokens_per_s": 900.0})
    sft.close()
    write_eval(run / "sft", eval_result(rng))
    metrics = MetricsLog(run / "rl", tensorboard=False)
    metrics.write(0, val_record(0))  # the SFT model's validation, before any RL step
    for step in range(1, STEPS + 1):
        metrics.write(step, step_record(step, rng))
    metrics.close()
    write_eval(run / "rl", eval_result(rng))
    (run / "baselines" / "sasrec").mkdir(parents=True)
    write_eval(run / "baselines" / "sasrec", {**eval_result(rng, sampled=False),
                                              "meta": {"best_epoch": 3, "dataset": "Office"}})
    ckpts = CheckpointManager(run / "rl" / "checkpoints", keep=2)
    ckpts.open_run(resume=False)
    ckpts.save(5, lambda folder: (folder / "driver.json").write_text(json.dumps({"step": 5})),
               {"weight_version": 5, "spec_hash": "0123456789abcdef"})
    (run / "rl" / "checkpoints" / "step-0000008").mkdir()  # killed mid-write: no manifest
    (run / "rl" / "status.json").write_text(json.dumps({
        "step": STEPS, "updated": time.time(), "restarts": 0,
        "workers": [{"slot": 0, "weight_version": STEPS, "alive": True},
                    {"slot": 1, "weight_version": STEPS - 1, "alive": False}]}))
    # Only the selection: the model files would make the run look finished.
    RunLayout(run).model("rl").mkdir()
    (RunLayout(run).model("rl") / "selection.json").write_text(json.dumps(
        {"step": SELECTED, "metric": "val/ndcg@10", "value": val_record(SELECTED)["val/ndcg@10"]}))
    return run


@pytest.fixture()
def server(run_dir):
    srv = make_server(run_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class Elements(HTMLParser):
    """Every element's tag and attributes, in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.items: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.items.append((tag, dict(attrs)))

    def having(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.items if t == tag and cls in a.get("class", "").split()]


def chromium(url: str, tmp_path: Path, *action: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--hide-scrollbars", *action, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def header(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no element #{element_id} in the rendered page"
    return match.group(1)


def path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


def plot(dom: str, plot_id: str) -> str:
    match = re.search(rf'id="{plot_id}">(.*?)</svg>', dom, re.S)
    assert match, f"no plot #{plot_id} in the rendered page"
    return match.group(1)


# Added to the served page: where the browser laid out each tick label, in its SVG's coordinates. A
# label starting left of 0 is cut off at the SVG's edge, as "1880.640" once lost its "1".
MEASURE_TICKS = """<script>
const drawn = render;
render = data => {
  drawn(data);
  document.querySelectorAll("text.tick").forEach(t => t.setAttribute("data-box-x", t.getBBox().x));
};
</script></body>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium not installed ({INSTALL})")
def test_dashboard_renders_every_plot_with_the_run_data(run_dir, server, tmp_path, monkeypatch):
    records = read_metrics(RunLayout(run_dir).metrics("rl"))
    monkeypatch.setattr(gream.dashboard, "PAGE", gream.dashboard.PAGE.replace("</body>", MEASURE_TICKS))
    dom = chromium(url_of(server), tmp_path, "--dump-dom")
    page = Elements(dom)

    assert header(dom, "step") == str(STEPS)
    assert header(dom, "ckpt").startswith("step 5 ")  # the truncated step-8 folder is not a checkpoint
    assert 'id="error" style="display: none;"' in dom

    series = {a["data-key"]: a for a in page.having("path", "series")}
    expected = {"reward/mean", "reward/std", "hit_rate", "dropped/all_miss", "dropped/all_hit",
                "dropped/constant", "kl", "entropy", "throughput/rollout_tokens_per_s", "loss_align",
                "val/recall@10", "val/ndcg@10", "val/tail_share@10", "val/coverage@10"}
    assert expected <= set(series), f"missing plots: {expected - set(series)}"
    for key in expected - {"loss_align"}:
        logged = sum(1 for r in records if isinstance(r.get(key), (int, float)))
        assert int(series[key]["data-points"]) == logged, key
        assert len(path_points(series[key]["d"])) == logged, key
    # Validation: steps 0, 4 and 8 joined in one line (not gaps at the steps without it), peaking at 4.
    assert int(series["val/ndcg@10"]["data-points"]) == 3 and series["val/ndcg@10"]["d"].count("M") == 1
    ys = [y for _, y in path_points(series["val/ndcg@10"]["d"])]
    assert ys[1] < ys[0] and ys[1] < ys[2]
    # The lists' shares in a plot of their own; novelty, in bits, in neither.
    plots = {name: set(re.findall(r'data-key="([^"]+)"', plot(dom, name))) for name in ("plot-val", "plot-val-lists")}
    assert plots == {"plot-val": {"val/recall@10", "val/ndcg@10"},
                     "plot-val-lists": {"val/tail_share@10", "val/coverage@10"}}
    best = re.search(r'id="val-best">(.*?)</section>', dom, re.S).group(1)
    assert f"best ndcg@10 {val_record(SELECTED)['val/ndcg@10']:.4f} at step {SELECTED}" in best
    assert f"rl/model: step {SELECTED} checkpoint, selected by val/ndcg@10" in best
    assert int(series["kl"]["data-points"]) == STEPS - 1  # the step without an update leaves a gap
    assert series["kl"]["d"].count("M") == 2
    assert int(series["loss_align"]["data-points"]) == 3
    # Rising reward: later points sit higher (smaller SVG y).
    ys = [y for _, y in path_points(series["reward/mean"]["d"])]
    assert ys[-1] < ys[0] and len(set(ys)) > 1
    assert page.having("polygon", "band"), "reward mean +- std band missing"

    bars = page.having("rect", "bar")
    lcp = [int(a["data-value"]) for a in bars if a["data-key"].startswith("lcp=")]
    assert lcp == records[-1]["lcp_hist"] and sum(lcp) == 64
    for part in ("rollout", "reward", "train", "push"):
        values = [float(a["data-value"]) for a in bars if a["data-key"] == f"time/{part}"]
        np.testing.assert_allclose(values, [r[f"time/{part}"] for r in records if f"time/{part}" in r])

    # Every axis covers its data, and every tick label is inside its SVG as the browser laid it out.
    ticks = page.having("text", "tick")
    assert ticks and all(float(t["data-box-x"]) >= 0 for t in ticks), [t for t in ticks if float(t["data-box-x"]) < 0]
    throughput = [r["throughput/rollout_tokens_per_s"] for r in records if "time/step" in r]
    reward_top = max(r["reward/mean"] + r["reward/std"] for r in records if "reward/mean" in r)
    for plot_id, top in (("plot-throughput", max(throughput)), ("plot-reward", reward_top),
                         ("plot-time", max(r["time/step"] for r in records if "time/step" in r)),
                         ("plot-lcp", max(records[-1]["lcp_hist"]))):
        labels = re.findall(r'<text class="tick" data-value="([^"]+)"[^>]*>([^<]*)<', plot(dom, plot_id))
        values = [float(v) for v, _ in labels]
        assert max(values) >= top and max(values) - top < (values[1] - values[0]), (plot_id, top, labels)
        assert all(float(text) == float(v) for v, text in labels), labels  # below 10,000: plain numbers
    assert max(throughput) == pytest.approx(1880.64)

    rows = dict(re.findall(r'<tr class="eval-row" data-key="([^"]+)">(.*?)</tr>', dom))
    assert set(rows) >= {"pass@1", "pass@5", "pass@10", "recall@10", "ndcg@10"}
    runs = re.findall(r'data-run="([^"]+)">', rows["pass@5"])
    assert runs == ["sft/valid", "sft/test", "rl/valid", "rl/test", "sasrec/valid", "sasrec/test"]
    rl_test = json.loads((run_dir / "rl" / "eval.json").read_text())["test"]
    assert f'data-run="rl/test">{rl_test["pass@5"]:.4f}<' in rows["pass@5"]
    assert 'data-run="sasrec/test">-<' in rows["pass@5"]  # SASRec does not sample
    sasrec_test = json.loads((RunLayout(run_dir).baselines / "sasrec" / "eval.json").read_text())["test"]
    assert f'data-run="sasrec/test">{sasrec_test["ndcg@10"]:.4f}<' in rows["ndcg@10"]

    workers = re.findall(r'<tr class="worker-row">(.*?)</tr>', dom)
    assert len(workers) == 2 and "alive" in workers[0] and 'class="dead">dead' in workers[1]
    assert 'class="stale">7' in workers[1]  # behind the driver's step

    RunLayout(run_dir).stage_marker("rl").write_text("{}")  # the stage ended: the pool is gone
    dom = chromium(url_of(server), tmp_path, "--dump-dom")
    workers = re.findall(r'<tr class="worker-row">(.*?)</tr>', dom)
    assert len(workers) == 2 and all('class="finished">finished' in w for w in workers), workers
    assert 'data-state="finished">driver finished at step 8' in dom and ">alive<" not in dom

    write_end(run_dir, "failed", "LearnerFailed")  # the driver's own word wins over any inference
    dom = chromium(url_of(server), tmp_path, "--dump-dom")
    assert 'data-state="failed"><span class="dead">driver failed (LearnerFailed)</span> at step 8' in dom
    assert ">alive<" not in dom

    shot = tmp_path / "dashboard.png"
    chromium(url_of(server), tmp_path, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == WINDOW
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    (REPO / "artifacts").mkdir(exist_ok=True)
    shutil.copy(shot, REPO / "artifacts" / "dashboard.png")


def fetch(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        return exc.code, json.loads(body) if exc.headers.get_content_type() == "application/json" else body


def test_api_follows_the_run_and_reports_bad_files(run_dir, server):
    status, body = fetch(url_of(server) + "api/metrics")
    assert status == 200 and body["rl"]["steps"] == list(range(0, STEPS + 1))
    assert body["rl"]["values"]["grad_norm"][2] is None  # NaN is not JSON: sent as a gap
    assert body["checkpoint"]["step"] == 5 and body["status"]["workers"][1]["alive"] is False
    assert body["driver"]["state"] == "running" and body["driver"]["stale_after"] == STALE_MIN_S
    assert body["validation"]["val/ndcg@10"] == {"step": STEPS, "value": val_record(STEPS)["val/ndcg@10"],
                                                 "best_step": SELECTED, "best_value": val_record(SELECTED)["val/ndcg@10"]}
    assert body["selection"] == {"step": SELECTED, "metric": "val/ndcg@10", "value": val_record(SELECTED)["val/ndcg@10"]}

    log = MetricsLog(run_dir / "rl", tensorboard=False, resume_from_step=STEPS)  # the next poll sees step 9
    log.write(STEPS + 1, step_record(STEPS + 1, np.random.default_rng(1)))
    log.close()
    with (RunLayout(run_dir).metrics("rl")).open("a") as fh:
        fh.write('{"step": 10, "reward/me')  # the writer mid-append
    status, body = fetch(url_of(server) + "api/metrics")
    assert status == 200 and body["rl"]["steps"][-1] == STEPS + 1

    assert fetch(url_of(server) + "nope")[0] == 404
    lines = (RunLayout(run_dir).metrics("rl")).read_text().splitlines()
    lines[1] = "garbage"
    (RunLayout(run_dir).metrics("rl")).write_text("\n".join(lines) + "\n")
    status, body = fetch(url_of(server) + "api/metrics")
    assert status == 500 and "metrics.jsonl: line 2 is not JSON" in body["error"]


def test_status_summarises_the_run(run_dir, capsys):
    from gream.cli import main

    assert main(["status", str(run_dir)]) == 0
    text = capsys.readouterr().out
    last = read_metrics(RunLayout(run_dir).metrics("rl"))[-1]
    assert f"rl step {STEPS}  weight version {STEPS}  groups kept 4/8" in text
    assert f"reward     {last['reward/mean']:.4f} +- {last['reward/std']:.4f}" in text
    assert f"all_miss {last['dropped/all_miss']:.3f}" in text
    assert f"step time  {last['time/step']:.2f}s = rollout {last['time/rollout']:.2f}" in text
    assert "lcp hist   " + " ".join(f"{i}:{n}" for i, n in enumerate(last["lcp_hist"])) in text
    assert "workers: 1/2 alive at step 8" in text and "slot 1: DEAD  weight version 7" in text
    assert re.search(r"checkpoint: step 5 \(\d+s ago\)", text)
    for key in ("val/recall@10", "val/ndcg@10"):
        assert (f"{key:<14} {val_record(STEPS)[key]:.4f} at step {STEPS}, "
                f"best {val_record(SELECTED)[key]:.4f} at step {SELECTED}") in text
    assert (f"model: rl/model is the step {SELECTED} checkpoint, selected by val/ndcg@10 "
            f"{val_record(SELECTED)['val/ndcg@10']:.4f}") in text
    assert "eval rl/test: recall@1" in text and "eval sasrec/test: recall@1" in text and "meta" not in text


def test_finished_or_stale_driver_is_not_reported_alive(run_dir):
    now = 1_000_000.0
    status = {"step": 8, "updated": now - 100, "workers": [{"slot": 0, "weight_version": 8, "alive": True}]}
    assert driver_state(status, [2.0, 3.0, 50.0], None, now).state == "running"
    assert driver_state(status, [2.0, 3.0, 4.0], None, now + 21).state == "stale"  # 121 s > 120 s
    slow = driver_state(status, [30.0, 40.0, 50.0], None, now + 250)  # 10 median steps: 400 s
    assert slow.state == "running" and slow.stale_after == 400.0
    assert driver_state(status, [30.0, 40.0, 50.0], None, now + 301).state == "stale"
    assert driver_state(status, [], None, now + 21).state == "stale"  # no step time yet: the minimum
    assert driver_state(status, [2.0], now - 99, now).state == "finished"  # the model came after the last step
    assert driver_state(status, [2.0], now - 100, now + 1e5).state == "finished"  # however long ago
    assert driver_state(status, [2.0], now - 500, now).state == "running"  # a previous run's model: re-run
    assert driver_state({"step": 8}, [2.0], None, now).state == "stale"  # no update time: no news

    layout = RunLayout(run_dir)
    old = time.time() - 3 * STALE_MIN_S
    layout.status.write_text(json.dumps({**json.loads(layout.status.read_text()), "updated": old}))
    text = format_status(read_run_state(run_dir))
    since = time.strftime("%H:%M:%S", time.localtime(old))
    assert f"workers: stale (driver not updating since {since}, 6min ago) at step 8" in text
    assert "alive" not in text and "slot 0: stale  weight version 8" in text and "slot 1: stale" in text
    (layout.model("rl") / "config.json").write_text("{}")  # saved after the last step
    text = format_status(read_run_state(run_dir))
    assert "workers: finished at step 8 (last update 6min ago)" in text and "slot 0: finished" in text
    assert "alive" not in text and "DEAD" not in text


def test_the_drivers_end_state_is_shown_as_it_wrote_it(run_dir):
    now = 1_000_000.0
    status = {"step": 8, "updated": now, "workers": [{"slot": 0, "weight_version": 8, "alive": True}]}
    for state in END_STATES:
        # However recent the update: an ended driver's alive flags are no news.
        assert driver_state({**status, "state": state}, [2.0], None, now).state == state
    failed = driver_state({**status, "state": "failed", "error": "LearnerFailed"}, [2.0], None, now + 1e5)
    assert failed.state == "failed" and failed.error == "LearnerFailed"

    write_end(run_dir, "stopped")
    assert "workers: driver stopped at step 8" in format_status(read_run_state(run_dir))
    write_end(run_dir, "failed", "LearnerFailed")
    text = format_status(read_run_state(run_dir))
    assert "workers: driver failed (LearnerFailed) at step 8" in text and "slot 0: failed" in text
    assert "alive" not in text
    assert json.loads(RunLayout(run_dir).status.read_text())["workers"][0]["alive"]  # the rest is kept


def test_empty_and_missing_run(tmp_path):
    (tmp_path / "fresh").mkdir()
    text = format_status(read_run_state(tmp_path / "fresh"))
    assert "rl: no steps logged yet" in text and "workers: no status yet" in text and "checkpoint: none yet" in text
    assert not (tmp_path / "fresh" / "rl").exists()  # reading never creates folders in the run
    with pytest.raises(RunDirError, match="no such run directory"):
        read_run_state(tmp_path / "absent")
    with pytest.raises(RunDirError, match="no such run directory"):
        make_server(tmp_path / "absent", "127.0.0.1", 0)


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": NaN}\n{"step": 3, "x"')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    path.write_text('[1, 2]\n{"step": 2}\n')
    with pytest.raises(RunDirError, match="line 1 is not an object with a 'step' key"):
        read_jsonl(path)


def test_gream_dashboard_command_serves_and_warns_once(run_dir):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gream.cli", "dashboard", str(run_dir), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert url, f"no URL in {line!r}"
        for _ in range(3):  # three polls of a run with a truncated checkpoint folder
            status, body = fetch(url.group(1) + "api/metrics")
            assert status == 200 and body["rl"]["steps"][-1] == STEPS
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert err.count("skipping incomplete checkpoint") == 1, err


# Closes an attribute, a script and a tag; if any of it were parsed as markup the image would exist
# and its handler would retitle the page.
HOSTILE = '"></script><img src=x onerror="document.title=\'pwned\'">'


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium not installed ({INSTALL})")
def test_values_from_the_run_are_shown_as_text_never_as_markup(run_dir, server, tmp_path):
    with (RunLayout(run_dir).metrics("rl")).open("a") as fh:
        fh.write(json.dumps({"step": STEPS + 1, "lcp_hist": [HOSTILE, 3], "time/push": 0.3}) + "\n")
    (run_dir / "rl" / "status.json").write_text(json.dumps({
        "step": HOSTILE, "updated": time.time(), "workers": [{"slot": HOSTILE, "weight_version": HOSTILE, "alive": True}]}))
    (RunLayout(run_dir).model("rl") / "selection.json").write_text(json.dumps({"step": HOSTILE, "metric": HOSTILE, "value": 1}))
    write_eval(run_dir / "rl", {HOSTILE: {"pass@1": 0.5}})

    dom = chromium(url_of(server), tmp_path, "--dump-dom")
    assert 'id="error" style="display: none;"' in dom  # the page drew everything, hostile values included
    assert "<title>gream dashboard</title>" in dom and not [t for t, _ in Elements(dom).items if t == "img"]
    bars = [a for a in Elements(dom).having("rect", "bar") if a["data-key"].startswith("lcp=")]
    assert [a["data-value"] for a in bars] == [HOSTILE, "3"]
    shown = HOSTILE.replace("<", "&lt;").replace(">", "&gt;")
    for where in (r'<tr class="worker-row"><td>(.*?)</td>', r"<title>LCP 0: (.*?) \(",
                  r"<div>rl/model: step .*? checkpoint, selected by (.*?) 1</div>"):
        assert re.search(where, dom, re.S).group(1) == shown, where
