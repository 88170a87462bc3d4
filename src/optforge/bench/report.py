"""The benchmark report: Markdown tables, a performance-profile PNG and training-curve PNGs.

:func:`summarize` reads ``OUT/run.json`` and ``OUT/trials/*.json`` and computes, per submission
and workload, the median over studies of the best trial's time and steps to target (with the
spread over studies), the benchmark scores from performance profiles (time-based, and
steps-based as the hardware-independent secondary score) and the geometric-mean speed-up over a
baseline. :func:`write_report` turns that into ``OUT/report.md``, ``OUT/summary.json``,
``OUT/trials.csv`` (:mod:`optforge.bench.results`), ``OUT/performance_profile.png``,
``OUT/ratios.png`` (up to 12 workloads) and ``OUT/curves_<workload>.png``.

Held-out variants follow AlgoPerf v0.5: when a run holds a base workload and its variant, the
base time counts only if the submission also reached the variant's target, and the variant is
not scored on its own.

Example::

    from optforge.bench.report import write_report
    write_report("bench-out")          # -> bench-out/report.md
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optforge.bench.algoperf.protocol import (
    algoperf_aggregate,
    algoperf_profile,
    algoperf_study_values,
)
from optforge.bench.records import scan_records
from optforge.bench.results import write_csv
from optforge.bench.rulesets import aggregate, study_bests
from optforge.bench.scoring import R_MAX, geometric_mean_speedup, performance_profile
from optforge.bench.study import BenchError

__all__ = ["format_table", "held_out_rule", "summarize", "write_report"]

DEFAULT_BASELINE = "adamw"


def _read_run(out: Path) -> dict[str, Any]:
    path = out / "run.json"
    if not path.exists():
        raise BenchError(f"{out} holds no benchmark run (no run.json); run `optforge bench run` "
                         "first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"{path} is unreadable ({e})") from None


def held_out_rule(
    times: Mapping[str, Mapping[str, float]], workloads: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """AlgoPerf v0.5's held-out rule: ``(times over scored workloads, scored workload names)``.

    A variant whose base is in ``workloads`` makes the base time ``inf`` for a submission that
    did not reach the variant's target, and is then dropped; a variant without its base in the
    run is scored as a workload of its own.
    """
    names = list(workloads)
    variants = {w: m.get("base") for w, m in workloads.items()
                if m.get("held_out") and m.get("base") in workloads}
    scored = [w for w in names if w not in variants]
    out: dict[str, dict[str, float]] = {}
    for sub, row in times.items():
        new = {w: row.get(w, math.inf) for w in scored}
        for var, base in variants.items():
            if not math.isfinite(row.get(var, math.inf)):
                new[base] = math.inf
        out[sub] = new
    return out, scored


def _spread(per_study: Mapping[int, float]) -> dict[str, Any]:
    vals = list(per_study.values())
    fin = [v for v in vals if math.isfinite(v)]
    return {
        "per_study": [v if math.isfinite(v) else None for _, v in sorted(per_study.items())],
        "reached": len(fin),
        "studies": len(vals),
        "min": min(fin) if fin else None,
        "max": max(fin) if fin else None,
    }


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarize(out_dir: str | Path, *, baseline: str | None = None,
              reference: str | None = None) -> dict[str, Any]:
    """Everything the report shows, as JSON-able data (``None`` stands for "not reached").

    The run's scoring protocol (``run.json``; runs made before protocols existed are
    ``optforge``) decides how trials, studies and held-out variants become scores
    (:mod:`optforge.bench.algoperf.protocol`). ``reference`` divides every time by that
    submission's instead of the per-workload best (AlgoPerf's ``reference_submission_tag``).
    """
    out = Path(out_dir)
    info = _read_run(out)
    cfg = info.get("config", {})
    records_by_id, damaged = scan_records(out)
    planned = info.get("trial_ids") or list(records_by_id)
    records = [records_by_id[i] for i in planned if i in records_by_id]
    workloads: dict[str, dict[str, Any]] = info.get("workloads") or {
        w: {} for w in cfg.get("workloads", [])
    }
    subs = list(cfg.get("submissions") or dict.fromkeys(r["submission"] for r in records))
    if baseline is None:
        baseline = DEFAULT_BASELINE if DEFAULT_BASELINE in subs else (subs[0] if subs else None)
    elif baseline not in subs:
        raise BenchError(f"baseline must be one of {', '.join(subs)} (got '{baseline}')")
    if reference is not None and reference not in subs:
        raise BenchError(f"reference must be one of {', '.join(subs)} (got '{reference}')")
    protocol = dict(info.get("protocol") or {"name": cfg.get("protocol", "optforge")})

    result: dict[str, Any] = {
        "config": cfg,
        "ruleset": info.get("ruleset", {}),
        "sessions": info.get("sessions", []),
        "workloads": workloads,
        "submissions": subs,
        "baseline": baseline,
        "reference": reference,
        "protocol": protocol,
        "source": info.get("source"),
        "trials": {"planned": len(planned), "recorded": len(records)},
        "status": {},
        "errors": [],
        "damaged": [f"{p.relative_to(out)}: {why}" for p, why in damaged],
    }
    for r in records:
        result["status"][r.get("status", "?")] = result["status"].get(r.get("status", "?"), 0) + 1
        if r.get("status") == "error":
            result["errors"].append(f"{r.get('trial_id')}: {r.get('error')}")

    algoperf = protocol["name"] == "algoperf"
    for key, label in (("time_to_target_s", "time"), ("steps_to_target", "steps")):
        ran = algoperf_aggregate(records, key) if algoperf else aggregate(records, key)
        med = {s: {w: ran.get(s, {}).get(w, math.inf) for w in workloads} for s in subs}
        bests = algoperf_study_values(records, key) if algoperf else study_bests(records, key)
        cells = {
            s: {w: {"median": _json_num(med[s][w]),
                    **_spread(bests.get((s, w), {}))} for w in workloads}
            for s in subs
        }
        if algoperf:  # AlgoPerf's held-out order and its fixed number of base workloads
            scored = list(protocol.get("base_workloads")
                          or [w for w, m in workloads.items() if not m.get("held_out")])
            variants = {w: m["base"] for w, m in workloads.items()
                        if m.get("held_out") and m.get("base")}
            scored_times = {s: {w: med[s].get(w, math.inf) for w in scored} for s in subs}
        else:
            scored_times, scored = held_out_rule(med, workloads)
        block: dict[str, Any] = {"cells": cells, "scored_workloads": scored}
        if subs and scored:
            if algoperf:
                prof = algoperf_profile({s: ran.get(s, {}) for s in subs}, scored, variants,
                                        reference=reference)
            else:
                prof = performance_profile(scored_times, scored, reference=reference)
            block["scores"] = prof.scores
            block["profile"] = {"taus": prof.taus.tolist(),
                                "rho": {s: v.tolist() for s, v in prof.rho.items()}}
            block["ratios"] = {s: {w: _json_num(v) for w, v in row.items()}
                               for s, row in prof.ratios.items()}
            if baseline is not None:
                block["speedup"] = {
                    s: {"geomean": _json_num(g) if g == g else None, "workloads": k}
                    for s, (g, k) in geometric_mean_speedup(scored_times, baseline,
                                                            scored).items()
                }
        result[label] = block
    result["curves"] = _curves(records)
    result["time_cut"] = [{k: r.get(k) for k in ("trial_id", "workload", "submission")}
                          for r in records if r.get("stop_reason") == "time_budget"]
    result["winners"] = _winners(records)
    result["ratios_to_best"] = {label: _ratios_to_best(result[label]["cells"], workloads)
                                for label in ("time", "steps")}
    result["trial_rows"] = [
        [str(r.get("trial_id")), str(r.get("status")),
         str(r.get("stop_reason", "")) + (" †" if r.get("stop_reason") == "time_budget" else ""),
         str(r.get("steps", "")), _fmt(r.get("train_time_s"), 3), _fmt(r.get("eval_time_s"), 3),
         _fmt(r.get("best_metric"), 4), "yes" if r.get("reached_target") else "no",
         _fmt_hparams(r.get("hparams_used") or r.get("hparams"))]
        for r in records
    ]
    return result


def _winners(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each study's best trial per workload and submission: the least time to target, or,
    where no trial reached it, the best metric."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["workload"], r["submission"], int(r.get("study", 0))), []).append(r)

    def rank(r: Mapping[str, Any]) -> tuple[int, float]:
        t = r.get("time_to_target_s")
        if r.get("status") == "ok" and r.get("reached_target") and t is not None:
            return 0, float(t)
        m = r.get("best_metric")
        return 1, math.inf if m is None else (-m if r.get("higher_is_better", True) else m)

    out = []
    for (w, s, j), rs in sorted(groups.items()):
        best = min(rs, key=rank)
        out.append({"workload": w, "submission": s, "study": j,
                    "trial_id": best.get("trial_id"), "reached": rank(best)[0] == 0,
                    "time_to_target_s": best.get("time_to_target_s"),
                    "steps_to_target": best.get("steps_to_target"),
                    "best_metric": best.get("best_metric"), "of_trials": len(rs),
                    "hparams": best.get("hparams_used") or best.get("hparams") or {}})
    return out


def _ratios_to_best(cells: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    workloads: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``workload -> submission -> median / best median`` (None: not reached), no cut-off."""
    out: dict[str, dict[str, float | None]] = {}
    for w in workloads:
        medians = {s: cells[s][w]["median"] for s in cells}
        best = min((v for v in medians.values() if v), default=None)
        out[w] = {s: (v / best if v and best else None) for s, v in medians.items()}
    return out


def _curves(records: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_wl: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        curve = r.get("curve") or []
        if not curve:
            continue
        by_wl.setdefault(r["workload"], []).append({
            "submission": r["submission"], "study": r.get("study", 0), "trial": r.get("trial", 0),
            "step": [p.get("step") for p in curve],
            "time": [p.get("train_time_s") for p in curve],
            "metric": [p.get("metric") for p in curve],
            "stop_reason": r.get("stop_reason"),
        })
    return by_wl


# ---------------------------------------------------------------------------- formatting


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _fmt_hparams(hp: Mapping[str, Any] | None) -> str:
    """``name=value`` pairs, numbers to 3 significant digits (defaults: "—")."""
    if not hp:
        return "—"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in hp.items())


def _cell(c: Mapping[str, Any], steps: bool) -> str:
    if c["median"] is None:
        return f"not reached ({c['reached']}/{c['studies']})" if c["studies"] else "not run"
    s = _fmt(c["median"]) if steps else f"{c['median']:.2f}"
    if c["studies"] > 1:
        lo, hi = c["min"], c["max"]
        s += f" [{_fmt(lo)}–{_fmt(hi)}]" if steps else f" [{lo:.2f}–{hi:.2f}]"
    return s + f" ({c['reached']}/{c['studies']})"


def _score_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for s in summary["submissions"]:
        row = [s]
        for label in ("time", "steps"):
            row.append(f"{summary[label].get('scores', {}).get(s, float('nan')):.3f}")
        sp = summary["time"].get("speedup", {}).get(s)
        if sp is None or sp["geomean"] is None:
            row.append("—")
        else:
            row.append(f"{sp['geomean']:.2f}× ({sp['workloads']})")
        cells = summary["time"]["cells"][s]
        row.append(f"{sum(c['median'] is not None for c in cells.values())}/{len(cells)}")
        rows.append(row)
    return rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _workload_rows(summary: Mapping[str, Any], label: str) -> list[list[str]]:
    rows = []
    cut = {(c["workload"], c["submission"]) for c in summary["time_cut"]}
    for w, meta in summary["workloads"].items():
        direction = "≥" if meta.get("higher_is_better", True) else "≤"
        tgt = meta.get("target")
        name = w + (" (held-out)" if meta.get("held_out") else "")
        head = [name, f"{meta.get('metric_name', '?')} {direction} {tgt}"]
        rows.append(head + [_cell(summary[label]["cells"][s][w], label == "steps")
                            + (" †" if (w, s) in cut else "")
                            for s in summary["submissions"]])
    return rows


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text comparison table for the terminal: score, then median time per workload."""
    subs = summary["submissions"]
    header = ["", "score", "steps score", *summary["workloads"]]
    rows = []
    for s in subs:
        row = [s, f"{summary['time'].get('scores', {}).get(s, float('nan')):.3f}",
               f"{summary['steps'].get('scores', {}).get(s, float('nan')):.3f}"]
        for w in summary["workloads"]:
            c = summary["time"]["cells"][s][w]
            row.append("—" if c["median"] is None else f"{c['median']:.1f}s")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(n) for x, n in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * n for n in widths))
    return "\n".join(lines) + "\n(median time to target over studies; — = not reached)"


def _workload_meta_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for w, m in summary["workloads"].items():
        direction = "≥" if m.get("higher_is_better", True) else "≤"
        what = m.get("description") or "—"
        if m.get("held_out"):
            what += f" (held-out variant of {m.get('base')})"
        rows.append([w, what, f"{m.get('metric_name', '?')} {direction} {m.get('target')}",
                     _fmt(m.get("step_budget")), _fmt(m.get("time_budget_s")),
                     f"{_fmt(m.get('eval_every_steps'))} steps"])
    return rows


def _how_it_ran(summary: Mapping[str, Any]) -> list[str]:
    if summary.get("source"):  # imported logs: how they ran is in the logs, not here
        return [f"- As logged: {summary['source']} (times are AlgoPerf's `score` column, the "
                "accumulated submission time)."]
    lines = []
    for k, s in enumerate(summary["sessions"], 1):
        m = s.get("machine", {})
        outcome = "" if s.get("outcome", "finished") == "finished" else f", {s['outcome']}"
        lines.append(
            f"- Session {k} ({s.get('started', '?')}, {_fmt(s.get('wall_s'))} s wall, "
            f"{s.get('trials_run', '?')} trials run{outcome}): {s.get('executor')}, "
            f"**{s.get('concurrent_trials', '?')} concurrent trial(s)**, "
            f"**{s.get('torch_threads_per_trial', '?')} torch thread(s) per trial**; "
            f"machine: {m.get('cpu', '?')}, {m.get('available_cores', '?')} cores available "
            f"({m.get('logical_cpus', '?')} logical), {m.get('platform', '?')}, "
            f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}."
        )
        la0, la1 = s.get("load_avg_start"), s.get("load_avg_end")
        if la0 or la1:
            fmt = lambda la: "?" if not la else f"{la[0]:.2f}"  # noqa: E731
            lines.append(f"  Load average (1 min) at start / end: {fmt(la0)} / {fmt(la1)} "
                         f"on {m.get('available_cores', '?')} cores (other processes count).")
        if s.get("command"):
            lines.append(f"  Command: `{s['command']}`")
    return lines


def _scoring_line(summary: Mapping[str, Any]) -> str:
    proto = summary.get("protocol") or {}
    if proto.get("name") == "algoperf":
        base = summary["time"].get("scored_workloads") or []
        line = ("Scoring: AlgoPerf's rules (protocol `algoperf`): a study's time is that of the "
                "trial reaching the target at the earliest evaluation; held-out variants count "
                f"after the 4× cut-off; ρ divides by the {len(base)} base workloads "
                f"({', '.join(base)}); one seed per study; evaluations by training time.")
    else:
        line = ("Scoring: optforge's protocol (`optforge`): a study's time is its least time "
                "to target; ρ divides by the scored workloads of the run.")
    if summary.get("reference"):
        line += f" Ratios are taken against the reference submission {summary['reference']}."
    if summary.get("source"):
        line += f" Imported from {summary['source']}."
    return line


def _markdown(summary: Mapping[str, Any], figures: Mapping[str, Any]) -> str:
    cfg, rs = summary["config"], summary["ruleset"]
    n_st = rs.get("num_studies")
    if rs.get("name") == "self":
        rules = (f"self-tuning (default hyperparameters, budget ×{rs.get('budget_scale')}, "
                 f"{n_st} {'study' if n_st == 1 else 'studies'})")
    elif cfg.get("tuner", "halton") == "bo":
        rules = (f"external tuning by Bayesian optimization ({rs.get('num_trials')} trials × "
                 f"{rs.get('num_studies')} studies, rounds of {cfg.get('tuner_batch')} trial(s) "
                 f"per study, budget ×{rs.get('budget_scale')})")
    else:
        rules = (f"external tuning ({rs.get('num_trials')} Halton trials × "
                 f"{rs.get('num_studies')} studies, budget ×{rs.get('budget_scale')})")
    space = "custom file" if cfg.get("search_space") else "each submission's own"
    setup = (f"; seed {cfg.get('seed')}"
             + (f"; steps capped at {cfg['max_steps']} per trial" if cfg.get("max_steps") else "")
             + ("; time budgets off (trials stop at the target or the step budget only)"
                if cfg.get("time_budgets") is False else "")
             + (f"; search space: {space}" if rs.get("name") == "external" else ""))
    if summary.get("source"):  # imported logs: trials as logged, no seed or space known here
        rules = (f"{'self-tuning' if rs.get('name') == 'self' else 'external tuning'} as "
                 f"logged (up to {rs.get('num_trials')} trial(s) × {rs.get('num_studies')} "
                 "studies)")
        setup = ""
    parts = [
        "# optforge bench report",
        "",
        f"Ruleset: {rules}{setup}.",
        f"Trials: {summary['trials']['recorded']} of {summary['trials']['planned']} recorded; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(summary["status"].items())) + ".",
        _scoring_line(summary),
        "",
        "## Workloads",
        "",
        _md_table(["workload", "what it is", "target", "step budget", "time budget (s)",
                   "evaluated every"], _workload_meta_rows(summary)),
        "",
        f"Budgets as listed, ×{rs.get('budget_scale')} under this ruleset.",
        "",
        "## How the trials ran",
        "",
        *_how_it_ran(summary),
        "",
        "Times are training (submission) seconds to the validation target, evaluation excluded, "
        "measured while the listed number of trials shared the machine; compare them only "
        "within this report. Steps to target do not depend on the machine.",
        "",
        "## Benchmark score",
        "",
        f"Normalized area under the performance profile for τ ∈ [1, {R_MAX:g}] (AlgoPerf; "
        "1 = fastest on every scored workload). Speed-up: geometric mean over workloads both "
        f"reached of t({summary.get('baseline')}) / t(submission) (number of workloads).",
        "",
        _md_table(["submission", "score (time)", "score (steps)",
                   f"speed-up vs {summary.get('baseline')}", "workloads reached"],
                  _score_rows(summary)),
        "",
        "## Time to target (s)",
        "",
        "Median over studies of the best trial's time [min–max over studies that reached the "
        "target] (studies reaching / studies).",
        "",
        _md_table(["workload", "target", *summary["submissions"]],
                  _workload_rows(summary, "time")),
        "",
        "## Steps to target",
        "",
        _md_table(["workload", "target", *summary["submissions"]],
                  _workload_rows(summary, "steps")),
        "",
    ]
    if summary["time_cut"]:
        parts += [f"† {len(summary['time_cut'])} trial(s) were cut by their time budget: how "
                  "far they got depends on the machine's speed and load, so their steps are "
                  "not machine-independent. `--no-time-budget` turns time budgets off.", ""]
    parts += ["## Winning configurations", "",
              "Each study's best trial (least time to target; where none reached it, the best "
              "metric) and the hyperparameters it used.", "",
              _md_table(["workload", "submission", "study", "best of", "trial", "time (s)",
                         "steps", "best metric", "hyperparameters"],
                        [[w["workload"], w["submission"], str(w["study"]), str(w["of_trials"]),
                          str(w["trial_id"]),
                          _fmt(w["time_to_target_s"], 3) if w["reached"] else "not reached",
                          _fmt(w["steps_to_target"]) if w["reached"] else "—",
                          _fmt(w["best_metric"], 4), _fmt_hparams(w["hparams"])]
                         for w in summary["winners"]]), ""]
    if figures.get("ratios"):
        parts += ["## Ratio to the best, per workload", "",
                  "Each submission's median time (and steps) to target divided by the best "
                  "submission's on that workload: 1 is the fastest; a bar at the top marks a "
                  "workload not reached.", "", f"![ratios to the best]({figures['ratios']})",
                  ""]
    if figures.get("profile"):
        parts += ["## Performance profiles", "", f"![performance profiles]({figures['profile']})",
                  ""]
    if figures.get("curves"):
        parts += ["## Training curves", "",
                  "Validation metric per evaluation of every trial; dashed line: target; the "
                  "marker at a curve's end says why it stopped (legend).", ""]
        for w, f in figures["curves"].items():
            parts += [f"### {w}", "", f"![{w}]({f})", ""]
    if summary["errors"]:
        parts += ["## Errors", "", *(f"- {e}" for e in summary["errors"]), ""]
    if summary["damaged"]:
        parts += ["## Damaged records", "",
                  "Not counted; the next run sets them aside in `trials/damaged/` and reruns "
                  "their trials.", "", *(f"- {d}" for d in summary["damaged"]), ""]
    if summary.get("trial_rows"):
        parts += ["## All trials", "",
                  _md_table(["trial", "status", "stopped by", "steps", "train s", "eval s",
                             "best metric", "target reached", "hyperparameters"],
                            summary["trial_rows"]), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- figures


def _plot_profiles(summary: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (label, title) in zip(axes, (("time", "time to target"),
                                          ("steps", "steps to target"))):
        prof = summary[label].get("profile")
        if prof:
            for k, (s, rho) in enumerate(prof["rho"].items()):
                score = summary[label]["scores"][s]
                # Distinct dashes: profiles often coincide over long stretches.
                ax.plot(prof["taus"], rho, drawstyle="steps-post", lw=1.8,
                        ls=("-", "--", "-.", ":")[k % 4], label=f"{s} ({score:.3f})")
        versus = summary.get("reference") or "the best submission"
        ax.set_xlabel(f"τ (ratio to {versus})")
        ax.set_title(f"Performance profile: {title}")
        ax.set_xlim(1, R_MAX)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("fraction of workloads ρ(τ)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: How each curve's end is marked: why the trial stopped.
_END_MARKERS = {"target": ("*", "reached the target"), "step_budget": ("s", "step budget spent"),
                "max_steps": ("s", "step budget spent"),
                "time_budget": ("v", "time budget spent"), "diverged": ("X", "diverged")}


def _log_scale(values: Sequence[float], higher_is_better: bool) -> bool:
    """A log axis where a positive metric to minimize spans about a decade or more (e.g. an
    MSE from 0.35 to a 0.04 target), so the region near a small target stays readable.
    Accuracies stay linear: on a log axis the top of their range is squashed."""
    return (not higher_is_better and bool(values) and min(values) > 0
            and max(values) / min(values) >= 5)


def _plot_curves(summary: Mapping[str, Any], workload: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    meta = summary["workloads"].get(workload, {})
    subs = summary["submissions"]
    colors = {s: f"C{i % 10}" for i, s in enumerate(subs)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    curves = summary["curves"].get(workload, [])
    ends: set[str] = set()
    for c in curves:
        color = colors.get(c["submission"], "k")
        marker, _ = _END_MARKERS.get(c.get("stop_reason"), ("o", ""))
        ends.add(c.get("stop_reason"))
        for ax, x in zip(axes, (c["step"], c["time"])):
            ax.plot(x, c["metric"], color=color, alpha=0.8, lw=1.2)
            pts = [(a, b) for a, b in zip(x, c["metric"]) if a is not None and b is not None]
            if pts:
                ax.plot(*pts[-1], marker=marker, color=color, ms=8, mec="k", mew=0.6)
    tgt = meta.get("target")
    for ax in axes:
        if tgt is not None:
            ax.axhline(tgt, ls="--", color="gray", lw=1)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training time (s)")
    axes[0].set_ylabel(meta.get("metric_name", "metric"))
    values = [v for c in curves for v in c["metric"] if v is not None]
    if _log_scale(values + ([tgt] if tgt else []), meta.get("higher_is_better", True)):
        axes[0].set_yscale("log")
    direction = "≥" if meta.get("higher_is_better", True) else "≤"
    fig.suptitle(f"{workload}: {meta.get('metric_name', 'metric')} {direction} {tgt} (dashed)")
    handles = [Line2D([], [], color=colors[s], lw=2, label=s) for s in subs
               if any(c["submission"] == s for c in curves)]
    seen_labels: set[str] = set()
    for reason in _END_MARKERS:
        marker, label = _END_MARKERS[reason]
        if reason in ends and label not in seen_labels:
            seen_labels.add(label)
            handles.append(Line2D([], [], ls="", marker=marker, color="w", mec="k", ms=8,
                                  label=f"end: {label}"))
    axes[1].legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ratios(summary: Mapping[str, Any], path: Path) -> None:
    """Grouped bars: per workload, each submission's median time (and steps) over the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    subs, workloads = summary["submissions"], list(summary["workloads"])
    ratios = summary["ratios_to_best"]
    top = max([v for lab in ratios.values() for row in lab.values() for v in row.values()
               if v is not None] + [2.0]) * 1.15
    width = 0.8 / max(1, len(subs))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(workloads) + 3), 3.8),
                             sharey=True)
    for ax, (label, title) in zip(axes, (("time", "time to target"), ("steps", "steps to target"))):
        for k, s in enumerate(subs):
            xs = [i + (k - (len(subs) - 1) / 2) * width for i in range(len(workloads))]
            vals = [ratios[label][w].get(s) for w in workloads]
            ax.bar([x for x, v in zip(xs, vals) if v is not None],
                   [v for v in vals if v is not None], width, color=f"C{k % 10}")
            missed = [x for x, v in zip(xs, vals) if v is None]
            ax.bar(missed, [top] * len(missed), width, color="none", edgecolor=f"C{k % 10}",
                   hatch="//", lw=1, alpha=0.45)
            for x, v in zip(xs, vals):
                ax.text(x, (v if v is not None else top) + top * 0.01,
                        f"{v:.2f}" if v is not None else "—",
                        ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_xticks(range(len(workloads)), workloads, rotation=15, fontsize=8)
        ax.set_title(f"Ratio to the best: {title}")
        ax.set_ylim(0, top * 1.15)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("median / best median (1 = best)")
    fig.legend(handles=[Patch(color=f"C{k % 10}", label=s) for k, s in enumerate(subs)]
               + [Patch(facecolor="none", edgecolor="gray", hatch="//", label="not reached")],
               loc="upper center", ncol=len(subs) + 1, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Up to this many workloads the report adds the bar chart of ratios to the best.
MAX_WORKLOADS_FOR_BARS = 12


def write_report(out_dir: str | Path, *, baseline: str | None = None,
                 figures: bool = True, reference: str | None = None) -> Path:
    """Write ``report.md``, ``summary.json`` and the PNGs into ``out_dir``; return the
    report's path (``reference``: see :func:`summarize`)."""
    out = Path(out_dir)
    summary = summarize(out, baseline=baseline, reference=reference)
    figs: dict[str, Any] = {}
    try:
        if figures:
            _plot_profiles(summary, out / "performance_profile.png")
            figs["profile"] = "performance_profile.png"
            if len(summary["workloads"]) <= MAX_WORKLOADS_FOR_BARS and summary["submissions"]:
                _plot_ratios(summary, out / "ratios.png")
                figs["ratios"] = "ratios.png"
            figs["curves"] = {}
            for w in summary["workloads"]:
                if summary["curves"].get(w):
                    name = f"curves_{w}.png"
                    _plot_curves(summary, w, out / name)
                    figs["curves"][w] = name
        # Curves stay in the trial records; the summary keeps the numbers.
        slim = {k: v for k, v in summary.items() if k not in ("curves", "trial_rows")}
        (out / "summary.json").write_text(json.dumps(slim, indent=1) + "\n", encoding="utf-8")
        write_csv(out)
        path = out / "report.md"
        path.write_text(_markdown(summary, figs), encoding="utf-8")
    except OSError as e:
        raise BenchError(f"cannot write the report into {out}: {e.strerror or e}") from None
    return path
