"""Write an evaluation result as metrics.json, report.md, a self-contained report.html and plots.

Everything is rendered from the metrics.json content alone (see
:func:`evaluation.runner.run_evaluation`), so a report can be rebuilt from a saved file.
Plots use matplotlib's Agg canvas through ``Figure`` objects, never pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from matplotlib.figure import Figure

PLOTS = {"metrics_vs_k": "metrics_vs_k.png", "streaming": "streaming.png",
         "activity": "activity.png"}


def write_report(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``report.html`` and PNG plots into ``out_dir``.

    Args:
        result: the metrics.json content (as returned by ``run_evaluation``).
        out_dir: created if missing; existing files of the same names are replaced.

    Returns:
        name -> path of every file written (``"metrics"``, ``"markdown"``, ``"html"``, plots).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json"}
    paths["metrics"].write_text(json.dumps(to_json(result), indent=2, allow_nan=False) + "\n")
    for key, fig in _plots(result).items():
        paths[key] = out / PLOTS[key]
        fig.savefig(paths[key], format="png", dpi=100)
    doc = _document(result, [k for k in PLOTS if k in paths])
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text(_markdown(doc))
    paths["html"] = out / "report.html"
    paths["html"].write_text(_html(doc, out, result.get("dataset", {}).get("name", "")))
    return paths


def to_json(value: object) -> object:
    """A JSON-safe copy: NaN and infinities become ``None``, tuples lists, keys strings.

    >>> to_json({"a": (1.0, float("nan")), 2: [float("inf")]})
    {'a': [1.0, None], '2': [None]}
    """
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return to_json(value.item())
    return str(value)


def headline_k(ks: list[int]) -> int:
    """20 when evaluated, else the middle cut-off.

    >>> headline_k([5, 10]), headline_k([10, 20, 50])
    (10, 20)
    """
    ks = sorted(ks)
    return 20 if 20 in ks else ks[len(ks) // 2]


def _fmt(x: object) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return f"[{_fmt(x[0])}, {_fmt(x[1])}]"
    return str(x)


def _document(r: dict, plots: list[str]) -> list[tuple]:
    """The report as blocks: ("h"|"h2"|"p", text), ("ul", items), ("table", head, rows),
    ("img", plot key); rendered by :func:`_markdown` and :func:`_html`."""
    ks = r["protocol"]["ks"]
    k = headline_k(ks)
    ds, sp, pr, run = r["dataset"], r["split"], r["protocol"], r["run"]
    ev = r.get("evaluation", {})
    doc: list[tuple] = [("h", f"Evaluation report: {ds['name']}")]
    doc.append(("p", f"Run started {run['started_at']}, took {run['duration_seconds']:.1f} s, "
                     f"seed {run['seed']}."))
    doc.append(("h2", "Data and split"))
    doc.append(("p", f"{ds['num_events']:,} events, {ds['num_users']:,} users, "
                     f"{ds['num_items']:,} items. Global temporal split: train before "
                     f"{sp['t1_iso']}, validation until {sp['t2_iso']}, test until "
                     f"{sp['end_iso']} (data from {sp['start_iso']})."))
    doc.append(("table", ["period", "from", "to", "events", "users", "items"], [
        [p, a, b, sp[f"{p}_events"], sp[f"{p}_users"], sp[f"{p}_items"]]
        for p, a, b in (("train", sp["start_iso"], sp["t1_iso"]),
                        ("valid", sp["t1_iso"], sp["t2_iso"]),
                        ("test", sp["t2_iso"], sp["end_iso"]))]))
    doc.append(("h2", "Protocol"))
    doc.append(("ul", [f"**{key.replace('_', ' ')}**: {_fmt(val)}" for key, val in pr.items()]))
    if ev:
        doc.append(("p", f"Evaluated users: {ev['n_users']:,} ({ev['n_warm_users']:,} warm, "
                         f"{ev['n_cold_users']:,} cold-start); {ev['dropped_users']:,} test "
                         "users had no unseen test item."))
    models = r["models"]
    info = r.get("model_info", {})
    top = r.get("headline") or {}
    if top.get("entries"):
        metric, best = top["metric"], top["best_baseline"]
        level = f"{top['ci_level']:.0%}"
        doc.append(("h2", f"Headline: {metric} against the best trending baseline"))
        doc.append(("p", f"Best baseline: {best} ({_baseline_choice(info.get(best, {}))}), "
                         f"{metric} = {_fmt(top['best_baseline_value'])}. The ratio is each "
                         f"entry's {metric} over it; the interval is the {level} paired "
                         "bootstrap of the per-user difference (above zero: it beats the "
                         "baseline)."))
        doc.append(("table", ["model", "baseline", metric, "ratio", "difference",
                              f"difference {level} CI"],
                    [[name, "yes" if e["baseline"] else "", e["value"],
                      _ratio(e["ratio"]), e["difference"],
                      e["difference_ci"]] for name, e in top["entries"].items()]))
        tuned = [f"**{n}**: {_baseline_choice(i)}" for n, i in info.items() if i.get("baseline")]
        doc.append(("ul", tuned))
    if models:
        doc.append(("h2", f"Results at K={k}"))
        cols = [f"{m}@{k}" for m in ("recall", "ndcg", "hit", "precision", "mrr",
                                     "recall_known", "coverage", "popularity", "head_share")]
        doc.append(("table", ["model"] + cols + [f"recall@{k} 95% CI"],
                    [[name] + [m.get(c) for c in cols] + [m.get(f"recall@{k}_ci")]
                     for name, m in models.items()]))
        doc.append(("h2", "Recall and NDCG at every K"))
        cols = [f"{m}@{kk}" for kk in ks for m in ("recall", "ndcg")]
        doc.append(("table", ["model"] + cols, [[n] + [m.get(c) for c in cols]
                                                for n, m in models.items()]))
        for group, title in (("users", "Warm vs cold-start users"),
                             ("activity", "Users by training activity (events)"),
                             ("items", "Head vs tail items (positives restricted)")):
            doc.append(("h2", title))
            rows = [[name, label, s["n_users"], s.get(f"recall@{k}"), s.get(f"ndcg@{k}"),
                     s.get(f"hit@{k}")]
                    for name, sl in r["slices"].items() for label, s in sl[group].items()]
            doc.append(("table", ["model", "slice", "users", f"recall@{k}", f"ndcg@{k}",
                                  f"hit@{k}"], rows))
    st = r.get("streaming") or {}
    if st.get("summary"):
        sk = st["k"]
        doc.append(("h2", "Streaming"))
        doc.append(("p", f"{st['n_windows']} windows of {st['window_seconds'] / 3600:g} h "
                         f"from {st['start_iso']} to {st['end_iso']}; before each window every "
                         "approach is prepared on all earlier events. Metrics are pooled "
                         "over (window, user) pairs."))
        if st.get("window_policy"):
            doc.append(("p", f"Windows: {st['window_policy']}. Per-window full retrain: "
                             f"{st.get('retrain', 'as configured')}. Baselines are refitted "
                             "before each window with their validated window and half-life; "
                             "+incremental runs the updater a retrain trains, as ingest "
                             "runs it."))
        vs = f"vs {st['best_baseline']}" if st.get("best_baseline") else "vs best baseline"
        doc.append(("table", ["approach", f"recall@{sk}", vs, f"ndcg@{sk}", f"hit@{sk}",
                              "prepare s", "score s", "compute s"],
                    [[n, s.get(f"recall@{sk}"), _ratio(s.get("ratio_to_best_baseline")),
                      s.get(f"ndcg@{sk}"), s.get(f"hit@{sk}"), s["prepare_seconds"],
                      s["score_seconds"], s["compute_seconds"]]
                     for n, s in st["summary"].items()]))
    if plots:
        doc.append(("h2", "Plots"))
        doc.extend(("img", key) for key in plots)
    if info:
        doc.append(("h2", "Models"))
        doc.append(("table", ["model", "class", "baseline", "epochs (chosen on validation)",
                              "fit s", "evaluate s", "hyper-parameters"],
                    [[n, i["class"], "yes" if i.get("baseline") else "", i.get("epochs"),
                      i["fit_seconds"], i["eval_seconds"],
                      json.dumps(to_json(i["hyper_parameters"]))]
                     for n, i in info.items()]))
    doc.append(("h2", "Environment"))
    doc.append(("ul", [f"{name} {version}" for name, version in run["versions"].items()]))
    return doc


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}x"


def _baseline_choice(info: dict) -> str:
    """How a baseline's parameter was chosen, in words."""
    if info.get("window_days") is not None:
        return f"last {info['window_days']:g} days, chosen on validation"
    if info.get("half_life_days") is not None:
        return f"decayed counts, half-life {info['half_life_days']:g} days, chosen on validation"
    return "all-time counts"


def _markdown(doc: list[tuple]) -> str:
    lines: list[str] = []
    for block in doc:
        kind = block[0]
        if kind == "h":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            lines.append("| " + " | ".join(block[1]) + " |")
            lines.append("|" + "---|" * len(block[1]))
            lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in block[2]]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[1]}]({PLOTS[block[1]]})", ""]
    return "\n".join(lines)


def _html(doc: list[tuple], out: Path, title: str) -> str:
    def esc(text: str) -> str:  # escape, then render the **bold** markers used in lists
        parts = html.escape(text).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body: list[str] = []
    for block in doc:
        kind = block[0]
        if kind in ("h", "h2"):
            tag = "h1" if kind == "h" else "h2"
            body.append(f"<{tag}>{esc(block[1])}</{tag}>")
        elif kind == "p":
            body.append(f"<p>{esc(block[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((out / PLOTS[block[1]]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{block[1]}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}th{background:#f4f4f4}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>streamrec "
            f"evaluation: {html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _plots(r: dict) -> dict[str, Figure]:
    figs: dict[str, Figure] = {}
    ks = sorted(r["protocol"]["ks"])
    models = r["models"]
    if models:
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        for ax, metric in zip(fig.subplots(1, 3), ("recall", "ndcg", "hit"), strict=True):
            for name, m in models.items():
                y = [m.get(f"{metric}@{k}", math.nan) for k in ks]
                ci = [m.get(f"{metric}@{k}_ci") or (v, v) for k, v in zip(ks, y, strict=True)]
                err = [[v - c[0] for v, c in zip(y, ci, strict=True)],
                       [c[1] - v for v, c in zip(y, ci, strict=True)]]
                ax.errorbar(ks, y, yerr=err, marker="o", capsize=3, label=name)
            ax.set(xlabel="K", ylabel=f"{metric}@K", title=f"{metric}@K (95% CI)", xticks=ks)
        fig.axes[0].legend(fontsize="small")
        figs["metrics_vs_k"] = fig
        k = headline_k(ks)
        labels = list(dict.fromkeys(b for sl in r["slices"].values() for b in sl["activity"]))
        if labels:
            fig = Figure(figsize=(8, 3.6), layout="constrained")
            ax = fig.subplots()
            width = 0.8 / len(models)
            for j, (name, sl) in enumerate(r["slices"].items()):
                y = [sl["activity"].get(b, {}).get(f"recall@{k}", math.nan) for b in labels]
                ax.bar([i + j * width for i in range(len(labels))], y, width, label=name)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
            ax.set(xlabel="training events per user", ylabel=f"recall@{k}",
                   title=f"recall@{k} by user activity")
            ax.legend(fontsize="small")
            figs["activity"] = fig
    st = r.get("streaming") or {}
    if st.get("summary"):
        sk = st["k"]
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        axes = fig.subplots(1, 3)
        for name in st["approaches"]:
            pts = [(w["start"], w["results"][name]) for w in st["windows"]
                   if name in w["results"]]
            days = [(t - st["start"]) / 86_400.0 for t, _ in pts]
            axes[0].plot(days, [v[f"recall@{sk}"] for _, v in pts], marker=".", label=name)
            axes[1].plot(days, [v[f"ndcg@{sk}"] for _, v in pts], marker=".", label=name)
            axes[2].plot(days, [v["prepare_seconds"] + v["score_seconds"] for _, v in pts],
                         marker=".", label=name)
        for ax, ylabel in zip(axes, (f"recall@{sk}", f"ndcg@{sk}", "compute seconds"),
                              strict=True):
            ax.set(xlabel="days since test start", ylabel=ylabel, title=f"{ylabel} per window")
        axes[0].legend(fontsize="small")
        figs["streaming"] = fig
    return figs
