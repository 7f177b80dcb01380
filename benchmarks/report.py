"""Turns a pytest-benchmark JSON file into benchmarks/README.md (tables, ratios) and log-log plots.

    python benchmarks/report.py benchmarks/results.json --command "bash .ci/benchmarks"
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
X_KEY = {"oce_loss": "pixels", "mean_shift": "points", "mean_shift_all": "points", "mean_shift_points": "points",
         "segment": "pixels"}
BASELINE = {"fused": ("reference", "sklearn")}


def _series(bench: dict) -> tuple:
    info = bench["extra_info"]
    variant = {k: v for k, v in info.items() if k not in ("op", "impl", "size", "pixels", "points", "fitted")
               and not isinstance(v, float)}
    return info["op"], info.get("impl", ""), tuple(sorted(variant.items()))


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def tables(benchmarks: list) -> list:
    lines = []
    groups = defaultdict(list)
    for b in benchmarks:
        if "memory" not in b["extra_info"].get("op", ""):  # memory figures are listed below, not timed
            groups[b["group"] or b["name"]].append(b)
    lines += ["| benchmark | implementation | min | median | rounds | speed-up of the fused op |",
              "|---|---|---|---|---|---|"]
    for group in sorted(groups):
        rows = groups[group]
        by_impl = {b["extra_info"].get("impl"): b for b in rows}
        fused = by_impl.get("fused")
        for b in sorted(rows, key=lambda b: b["extra_info"].get("impl", "")):
            impl = b["extra_info"].get("impl", "")
            ratio = ""
            if fused is not None and impl != "fused":
                ratio = f"{b['stats']['median'] / fused['stats']['median']:.1f}x (median), " \
                        f"{b['stats']['min'] / fused['stats']['min']:.1f}x (min)"
            lines.append(f"| {group} | {impl} | {_fmt(b['stats']['min'])} | {_fmt(b['stats']['median'])} | "
                         f"{b['stats']['rounds']} | {ratio} |")
    return lines


def extras(benchmarks: list) -> list:
    lines = []
    for b in benchmarks:
        info = b["extra_info"]
        if info.get("op") == "oce_loss_memory":
            lines.append(f"- peak extra memory, OCE loss forward+backward, B=8, 236x236, {info['refs']} reference(s): "
                         f"fused {info['fused_mib']:.1f} MiB, reference {info['reference_mib']:.1f} MiB "
                         f"(ratio 1/{info['reference_mib'] / max(info['fused_mib'], 1e-9):.0f})")
        if info.get("op") == "train_step":
            lines.append(f"- one training step on CPU (U-Net {info['num_fmaps']} feature maps, batch {info['batch']}, "
                         f"{info['crop']} px crops): {_fmt(b['stats']['min'])}; the fused loss (forward+backward) "
                         f"takes {_fmt(info['loss_seconds'])} of it = {100 * info['loss_share']:.2f}%")
    return lines


def plots(benchmarks: list, out_dir: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_op = defaultdict(lambda: defaultdict(list))
    for b in benchmarks:
        op = b["extra_info"].get("op")
        if op not in X_KEY or X_KEY[op] not in b["extra_info"]:
            continue
        _, impl, variant = _series(b)
        label = impl + "".join(f", {k}={v}" for k, v in variant)
        by_op[op][label].append((b["extra_info"][X_KEY[op]], b["stats"]["median"]))
    out_dir.mkdir(exist_ok=True)
    written = []
    for op, series in sorted(by_op.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in sorted(series.items()):
            points.sort()
            ax.loglog([p[0] for p in points], [p[1] for p in points], "o-", label=label)
        ax.set_xlabel(X_KEY[op])
        ax.set_ylabel("median time (s)")
        ax.set_title(op)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{op}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json")
    parser.add_argument("--command", required=True, help="the command that produced the JSON")
    parser.add_argument("--out", default=str(HERE / "README.md"))
    args = parser.parse_args()
    data = json.loads(Path(args.json).read_text())
    benchmarks = data["benchmarks"]
    m = data["machine_info"]
    cpu = m.get("cpu", {})
    out = Path(args.out)
    images = plots(benchmarks, out.parent / "plots")
    text = ["# Benchmarks", "",
            "Every accelerated path raced against its pure-PyTorch / scikit-learn reference in the same run; each "
            "benchmark first checks that both sides compute the same result. Regenerate this page with", "",
            f"    {args.command}", "",
            f"Measured {data.get('datetime', '')[:19]} on {cpu.get('brand_raw', m.get('processor', '?'))} "
            f"({cpu.get('count', '?')} logical CPUs), torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} "
            f"threads, Python {m.get('python_version', '?')}"
            + (f", GPU {m['cuda_device']}" if m.get("cuda_device") else ", no GPU") + ".", "",
            "## Timings", ""] + tables(benchmarks) + ["", "## Other figures", ""] + extras(benchmarks) + \
           ["", (HERE / "notes.md").read_text()] + \
           ["", "## Cost vs problem size (log-log)", ""] + \
           [f"![{p.stem}](plots/{p.name})" for p in images] + [""]
    out.write_text("\n".join(text))
    print(f"wrote {out} and {len(images)} plot(s)")


if __name__ == "__main__":
    main()
