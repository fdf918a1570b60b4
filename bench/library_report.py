"""Acceptance figures of a built library: BLD NMSE before/after, parent KL, per-layer rank correlation of KL
with variant size, additivity error of the latency model per scenario, stage times.

    python bench/library_report.py OUT_DIR
"""

from __future__ import annotations

import statistics
import sys

from puzzle.library import BlockLibrary
from puzzle.library.build import load_report


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def main(out: str) -> None:
    library, report = BlockLibrary.load(out), load_report(out)
    print(f"library {out}: {library.n_layers} layers, {library.n_variants} variants, executor {report.get('executor')}")
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report.get("seconds", {}).items()))
    print(f"total {sum(report.get('seconds', {}).values()):.0f} s")
    units = report["units"]
    better = sum(u["nmse_final"] < u["nmse_init"] for u in units)
    print(f"\nBLD units: {len(units)}; NMSE lowered by distillation in {better}/{len(units)}")
    print(f"{'layer':>5}  {'unit':<48} {'NMSE init':>10} {'NMSE BLD':>10} {'steps':>6}")
    for u in sorted(units, key=lambda u: (u["layer"], str(u["changes"]))):
        name = " & ".join(u["changes"].values())
        print(f"{u['layer']:>5}  {name:<48} {u['nmse_init']:>10.4f} {u['nmse_final']:>10.4f} {u['steps']:>6}")
    print("\nper layer: parent KL, Spearman(KL, num_params) over variants, Spearman(KL, params) over non-no-op")
    for layer in library.layers:
        kl = [v.metrics["kl_div"] for v in layer.variants]
        params = [v.costs["num_params"] for v in layer.variants]
        print(f"layer {layer.index}: parent KL {layer.parent.metrics['kl_div']!r}  rho {spearman(kl, params):+.3f}")
    print("\nadditivity (sum of parent blocks + non-block vs measured parent):")
    for sc, a in report["additivity"].items():
        print(
            f"  {sc}: measured {a['measured_ms']:.3f} ms (spread {a['measured_spread_ms']:.3f}), "
            f"predicted {a['predicted_ms']:.3f} ms = blocks {a['sum_of_blocks_ms']:.3f} + non-block {a['non_block_ms']:.3f}; "
            f"error {100 * a['relative_error']:+.1f} %"
        )


if __name__ == "__main__":
    main(sys.argv[1])
