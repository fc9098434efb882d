"""Trace a run's global update round by round: client scales, update sizes, the global ΔW's spectrum, and what the
held-out scoring predicts. Used to explain FlexLoRA's flat accuracy in the study (docs/results.md).

    python benchmarks/trace_global.py CONFIG [key=value ...] --out RUN_DIR

Runs ``fedlora run`` unchanged, observing it: after every aggregation it records, per participant, the scale s_k
its adapter trained at, ‖s_k(B_k A_k − B_k⁰ A_k⁰)‖_F (its round's change of ΔW) and ‖B_k − B_k⁰‖_F / ‖B_k⁰‖_F (how much
of the B it was handed its training replaced), and for the global model the
largest singular values and ‖ΔW‖_F / ‖W0‖_F over the target modules; after every evaluation it records how the
predictions spread over the answer options (share of the most frequent predicted option text, per task). Writes
RUN_DIR/trace.jsonl and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

import fedlora.evaluation.heldout as heldout
import fedlora.federation as federation
from fedlora.config import load_config

TRACE: list[dict] = []


def global_delta(method, layers) -> dict[str, torch.Tensor]:
    """ΔW per module of the current global model relative to the ORIGINAL base (export view: scale folded)."""
    factors, scales = method.export_adapter()
    return {name: scales[name] * (B.double() @ A.double()) for name, (B, A) in factors.items()}


def spectrum_facts(deltas: dict[str, torch.Tensor], layers) -> dict:
    ratios, tops = [], []
    for name, dw in deltas.items():
        w0 = layers[name].base.weight.detach().double()
        ratios.append(float(dw.norm() / w0.norm()))
        tops.append(torch.linalg.svdvals(dw)[:3].tolist())
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    return {
        "dW_over_W0_mean": sum(ratios) / len(ratios),
        "dW_over_W0_max": ratios[worst],
        "top_sv_of_worst_module": [round(x, 4) for x in tops[worst]],
    }


def observe(method, setup):
    aggregate = method.aggregate

    def traced_aggregate(plans, uploads, weights, *args, **kwargs):
        clients = []
        for plan, upload in zip(plans, uploads, strict=True):
            change = moved = held = 0.0
            for name, (B, A) in upload.items():
                B0, A0 = plan.factors[name]
                change += float((plan.scale * (B.double() @ A.double() - B0.double() @ A0.double())).norm() ** 2)
                moved += float((B - B0).double().norm() ** 2)
                held += float(B0.double().norm() ** 2)
            clients.append(
                {
                    "client": plan.client_id,
                    "rank": plan.rank,
                    "scale": plan.scale,
                    "dW_change": change**0.5,
                    # how much of the B it was handed the client's training replaced (inf for B = 0 hand-offs)
                    "B_rel_change": (moved / held) ** 0.5 if held > 0 else float("inf"),
                }
            )
        facts = aggregate(plans, uploads, weights, *args, **kwargs)
        TRACE.append({"clients": clients, **spectrum_facts(global_delta(method, setup.layers), setup.layers)})
        return facts

    method.aggregate = traced_aggregate
    return method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    config = load_config(Path(args.config), args.overrides)

    build_method = federation.build_method
    setups = []

    def traced_build(config, setup):
        setups.append(setup)
        return observe(build_method(config, setup), setup)

    pick = heldout.pick_options
    evals: list[dict] = []

    def traced_pick(scores, gold):
        accuracy, predicted = pick(scores, gold)
        eval_set = setups[-1].eval_set if setups else None
        texts = [eval_set.options[i][p] for i, p in enumerate(predicted.tolist())] if eval_set else []
        tasks = eval_set.tasks if eval_set is not None and eval_set.tasks is not None else ["all"] * len(texts)
        per_task: dict[str, Counter] = {}
        for task, text in zip(tasks, texts, strict=True):
            per_task.setdefault(task, Counter())[text] += 1
        evals.append(
            {
                "accuracy": accuracy,
                "most_common_share": {
                    t: round(c.most_common(1)[0][1] / sum(c.values()), 3) for t, c in per_task.items()
                },
                "most_common_text": {t: c.most_common(1)[0][0] for t, c in per_task.items()},
            }
        )
        return accuracy, predicted

    federation.build_method = traced_build
    heldout.pick_options = traced_pick
    federation.run(config, args.out)
    with open(args.out / "trace.jsonl", "w") as f:
        for i, row in enumerate(TRACE, start=1):
            f.write(json.dumps({"round": i, **row}) + "\n")
        for j, row in enumerate(evals):
            f.write(json.dumps({"evaluation": j, **row}) + "\n")
    for i, row in enumerate(TRACE, start=1):
        scales = ", ".join(
            f"r{c['rank']}:s={c['scale']:.3g}:|dΔW|={c['dW_change']:.3g}:|dB|/|B|={c['B_rel_change']:.3g}"
            for c in row["clients"]
        )
        print(
            f"round {i}: ‖ΔW‖/‖W0‖ mean {row['dW_over_W0_mean']:.3f} max {row['dW_over_W0_max']:.3f} "
            f"top σ {row['top_sv_of_worst_module']}  clients {scales}"
        )
    for j, row in enumerate(evals):
        print(
            f"evaluation {j}: accuracy {row['accuracy']:.3f}  most common prediction share {row['most_common_share']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
