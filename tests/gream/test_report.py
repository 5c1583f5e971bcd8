"""`gream report RUN`: one HTML file with the run's plots embedded, its evaluations and paired
intervals against another run, rendered in headless Chromium (every plot image must load).

The run folder is written by the real writers (MetricsLog, write_eval with ranks that reproduce
eval.json, as gream compare checks), with the dashboard test's step records."""
from __future__ import annotations

import base64
import json
import re
import struct

import numpy as np
import pytest

from cluster.eval_record import RankRecord, split_ranks, write_eval
from cluster.metrics_log import MetricsLog
from gream.cli import main
from gream.compare import compare, load_stage
from sft.metrics import metrics_from_ranks
from tests.gream.test_dashboard import CHROMIUM, INSTALL, STEPS, Elements, chromium, step_record, val_record

KS = (1, 5, 10)
USERS = np.arange(60)
PLOTS = {"reward", "val-ndcg-10", "val-recall-10", "kept", "timings"}


def evaluate(folder, seed: int) -> dict:
    """eval.json and ranks.json of one stage: random target ranks (some past the depth)."""
    rng = np.random.default_rng(seed)
    splits, result = {}, {}
    for split in ("valid", "test"):
        ranks = rng.integers(0, 14, USERS.size)
        splits[split] = split_ranks(USERS, ranks, 10)
        result[split] = metrics_from_ranks(splits[split].ranks, KS)
    write_eval(folder, result, RankRecord(10, KS, splits))
    return result


@pytest.fixture()
def runs(tmp_path):
    run, other = tmp_path / "run", tmp_path / "base"
    log = MetricsLog(run / "rl", tensorboard=False)
    log.write(0, val_record(0))
    rng = np.random.default_rng(0)
    for step in range(1, STEPS + 1):
        log.write(step, step_record(step, rng))
    log.close()
    evaluate(run / "sft", 1)
    evaluate(run / "rl", 2)
    evaluate(other / "sft", 3)
    return run, other


def images(page: str) -> dict[str, bytes]:
    return {key: base64.b64decode(data) for key, data in
            re.findall(r'id="plot-([\w-]+)"[^>]*src="data:image/png;base64,([^"]+)"', page)}


def test_report_embeds_every_plot_and_pairs_against_the_other_run(runs, capsys):
    run, other = runs
    assert main(["report", str(run), "--against", f"{other}:sft", "--resamples", "200"]) == 0
    path = run / "report.html"
    assert capsys.readouterr().out.strip() == str(path)
    page = path.read_text()
    pngs = images(page)
    assert set(pngs) == PLOTS
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000 for png in pngs.values())

    cells = re.findall(r"<tr><td>([^<]+)</td>((?:<td>[^<]*</td>)+)</tr>", page)
    table = {label: re.findall(r"<td>([^<]*)</td>", rest) for label, rest in cells}
    test_ndcg = json.loads((run / "rl" / "eval.json").read_text())["test"]["ndcg@10"]
    assert table["rl / test"][3] == f"{test_ndcg:.4f}"  # recall@5, recall@10, ndcg@5, ndcg@10

    expected = compare([load_stage(f"{other}:sft"), load_stage(f"{run}:rl")], resamples=200)
    m = expected["splits"]["test"]["comparisons"][0]["metrics"]["ndcg@10"]
    paired = page.split(f"{run}:rl - {other}:sft, test")[1].split("</table>")[0]
    row = re.search(r"<tr><td>ndcg@10</td>(.*?)</tr>", paired).group(1)
    assert f"{m['diff']:+.4f} [{m['low']:+.4f}, {m['high']:+.4f}]" in row and m["verdict"] in row


def test_report_without_rl_steps_draws_nothing_and_says_so(runs, tmp_path):
    run, _ = runs
    (run / "rl" / "metrics.jsonl").unlink()
    page = (tmp_path / "page.html")
    assert main(["report", str(run), "--out", str(page)]) == 0
    assert images(page.read_text()) == {} and "No RL step logged" in page.read_text()
    assert main(["report", str(run), "--against", "nowhere"]) == 2  # not RUN_DIR:STAGE


# Added to the written page: each image's decoded size, once the page (images included) has loaded.
MEASURE = """<script>window.addEventListener("load", () => document.querySelectorAll("img").forEach(
  i => i.setAttribute("data-natural", i.naturalWidth + "x" + i.naturalHeight)));</script></body>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium not installed ({INSTALL})")
def test_chromium_loads_every_plot_of_the_report(runs, tmp_path):
    run, other = runs
    assert main(["report", str(run), "--against", f"{other}:sft", "--resamples", "200"]) == 0
    page = (run / "report.html").read_text()
    shown = tmp_path / "shown.html"
    shown.write_text(page.replace("</body>", MEASURE))
    dom = chromium(shown.as_uri(), tmp_path, "--dump-dom")
    drawn = {a["id"]: a.get("data-natural") for t, a in Elements(dom).items if t == "img"}
    sizes = {f"plot-{k}": "{}x{}".format(*struct.unpack(">II", png[16:24])) for k, png in images(page).items()}
    assert drawn == sizes and len(drawn) == len(PLOTS)
    assert "0x0" not in drawn.values()
