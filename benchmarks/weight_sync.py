"""Weight push vs a raw broadcast of the same bytes on the same group.

The sender (this process, rank 0) pushes a model's named parameters to `--workers` rollout workers
(Ray actors with vLLM engines): plan through Ray + collective_rpc, buckets over the weight group,
loading in the engines (in place for an unquantized model), prefix-cache reset. Before each push the
model takes an AdamW step, and the push is timed from the end of that step to the last worker
reporting its new version (as the RL loop's `time/push`). The baseline broadcasts uint8 buffers of
the same bucket sizes on the same group to the same receivers, with nothing else. Push and baseline
alternate `--repeats` times after a warm-up round; medians, [min, max] and each round's ratio are
printed.

    python benchmarks/weight_sync.py --hidden 512 --layers 8 --workers 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks.results import record  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bucket-mib", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoModelForCausalLM

    from cluster.device import resolve
    from cluster.ranks import free_port
    from cluster.spec import JobSpec
    from indexing.importer import import_index
    from rl_system.rollout.engine import EngineConfig, untrained_sid_policy
    from rl_system.rollout.worker import connect_weight_group, start_rollout_worker
    from rl_system.weight_sync.plan import plan_buckets
    from rl_system.weight_sync.sender import WeightSender

    index = import_index(REPO / "data/office/Office.unitok5.index.json").index
    spec = JobSpec(name="bench", run_dir=tempfile.mkdtemp(), data={"path": str(REPO / "data/office")},
                   model={"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": max(1, args.hidden // 64)})
    model_dir, constraint = untrained_sid_policy(spec, index, spec.run_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    named = list(model.named_parameters())

    placement = resolve("auto")
    ray.init(address="local", num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False)
    cfg = EngineConfig(model=str(model_dir), constraint_path=str(constraint), placement=placement,
                       max_model_len=256, max_num_seqs=16)
    workers = [start_rollout_worker(cfg, gpus=1 if placement.is_gpu else 0) for _ in range(args.workers)]
    ray.get([w.weight_version.remote() for w in workers])
    port = free_port()
    sender = WeightSender("127.0.0.1", port, world_size=1 + args.workers, backend=placement.dist_backend,
                          device=placement.torch_device(), bucket_bytes=args.bucket_mib << 20)
    connect_weight_group(sender, workers, "127.0.0.1", port, placement.dist_backend)
    sizes = [b.nbytes for b in plan_buckets(named, sender.bucket_bytes)]

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    probe = torch.randint(0, model.config.vocab_size, (2, 16))
    push, load, raw, in_place, version = [], [], [], [], 0
    for _ in range(args.repeats + 1):  # the first round warms up
        version += 1
        optimizer.zero_grad()
        model(input_ids=probe, labels=probe).loss.backward()
        optimizer.step()
        start = time.perf_counter()
        stats = sender.push(model.named_parameters(), version, workers)
        push.append(time.perf_counter() - start)
        load.append(stats.load_seconds)
        in_place.append(stats.in_place)
        raw.append(sender.broadcast_raw(sizes, workers))
    push, load, raw = push[1:], load[1:], raw[1:]
    mib = sum(sizes) / (1 << 20)
    p, r, lo = statistics.median(push), statistics.median(raw), statistics.median(load)
    ratios = [a / b for a, b in zip(push, raw)]
    print(f"\nmodel {sum(t.numel() for _, t in named) / 1e6:.1f}M params ({mib:.0f} MiB fp32, {len(sizes)} buckets), "
          f"{args.workers} worker(s), backend={placement.dist_backend}; median of {args.repeats} runs")
    loading = "in place" if all(in_place) else "through vLLM's reload_weights"
    print(f"push = from the end of an AdamW step to the last worker's receipt: plan + per-tensor broadcasts + loading "
          f"{loading} (+ prefix-cache reset); load = receiver's time loading, excluding waits for bytes")
    print(f"{'push s':>8} {'raw broadcast s':>16} {'ratio':>7} {'load s':>9} {'(push - load) / raw':>22} "
          f"{'push MiB/s':>11}")
    print(f"{p:>8.3f} {r:>16.3f} {p / r:>7.3f} {lo:>9.3f} {(p - lo) / r:>22.3f} {mib / p:>11.0f}")
    print(f"spread [min, max]: push [{min(push):.3f}, {max(push):.3f}] s, raw [{min(raw):.3f}, {max(raw):.3f}] s, "
          f"per-round ratios " + ", ".join(f"{x:.2f}" for x in ratios) + f" (median {statistics.median(ratios):.2f})")
    versions = ray.get([w.weight_version.remote() for w in workers])
    assert versions == [version] * args.workers, versions
    ray.shutdown()
    record("weight_sync", {"push_s": p, "raw_s": r, "ratio": p / r, "load_s": lo, "round_ratios": ratios,
                           "runs_push_s": push, "runs_raw_s": raw, "mib": mib, "in_place": all(in_place)},
           script=__file__, settings={"hidden": args.hidden, "layers": args.layers, "workers": args.workers,
                                      "bucket_mib": args.bucket_mib, "repeats": args.repeats,
                                      "backend": placement.dist_backend,
                                      "parameters_m": sum(t.numel() for _, t in named) / 1e6})


if __name__ == "__main__":
    main()
