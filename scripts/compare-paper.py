#!/usr/bin/env python3
"""Compares an exported MasakhaNEWS run with the paper's Tables 1-2 and summarises the run's
diagnostics, as Markdown on stdout (the body of results/examples/masakhanews-e5/RESULTS.md).

    scripts/compare-paper.py EXPORT_DIR PAPER_CSV WORKDIR

EXPORT_DIR: `pipeline export MANIFEST --csv EXPORT_DIR`; PAPER_CSV: the paper's per-language
accuracies (results/examples/masakhanews-e5/paper_tables_1_2.csv); WORKDIR: the run's workdir,
whose store holds the per-instance diagnostics (psg diagnostics.csv; personalize lambdas.csv,
ranks.csv, updates.csv, curve.csv) — only the instances in EXPORT_DIR/runs.csv are read, since
a store also keeps the entries of earlier versions of the manifest. Standard library only.
"""
import csv
import json
import os
import statistics as st
import struct
from array import array
import sys
from collections import defaultdict

LABEL = {"lora": "LoRA", "adalora": "AdaLoRA", "bayestune_lora": "BayesTune-LoRA",
         "fedl2p": "FedL2P", "fedp2eft": "FedP2EFT"}
METHODS = list(LABEL)
BUDGETS = [2, 4, 8, 16]
POOLS = ["seen", "unseen"]
TIE = 0.005  # the report's two-decimal tie tolerance


def read_ours(export):
    """(pool, budget, method, language) -> (mean, sd, wins-row) from the report tables."""
    out, wins = {}, {}
    for pool in POOLS:
        path = next((os.path.join(export, f) for f in os.listdir(export)
                     if f.startswith("report__") and f"_{pool}_" in f and f.endswith(".csv")), None)
        if path is None:
            continue
        for r in csv.DictReader(open(path)):
            key = (pool, int(r["budget"]), r["method"], r["language"])
            out[key] = (float(r["mean"]), float(r["sd"]) if r["sd"] else None)
            wins[(pool, int(r["budget"]), r["method"])] = int(r["wins"])
    return out, wins


def read_paper(path):
    inv = {v: k for k, v in LABEL.items()}
    out = {}
    for r in csv.DictReader(open(path)):
        out[(r["pool"], int(r["budget"]), inv[r["method"]], r["language"])] = float(r["mean"])
    return out


def languages(table, pool):
    return sorted({k[3] for k in table if k[0] == pool})


def beats(table, pool, b, a, lang):
    """Whether method `a` is strictly better than `b` (beyond the tie tolerance)."""
    x, y = table.get((pool, b, a, lang)), table.get((pool, b, "lora", lang))
    if x is None or y is None:
        return None
    x = x[0] if isinstance(x, tuple) else x
    y = y[0] if isinstance(y, tuple) else y
    return x - y > TIE


def headline(ours, paper):
    lines = ["## FedP2EFT vs LoRA, per budget", "",
             "Languages (of those the run has) where FedP2EFT's mean accuracy is above LoRA's "
             f"(ties within {TIE} points count for neither), and the mean over languages of "
             "FedP2EFT − LoRA:", "",
             "| pool | budget | ours: FedP2EFT > LoRA | paper | ours: mean Δ (points) | paper: mean Δ |",
             "|---|---|---|---|---|---|"]
    for pool in POOLS:
        langs = languages(ours, pool)
        for b in BUDGETS:
            w = [beats(ours, pool, b, "fedp2eft", l) for l in langs]
            pw = [beats(paper, pool, b, "fedp2eft", l) for l in languages(paper, pool)]
            d = [ours[(pool, b, "fedp2eft", l)][0] - ours[(pool, b, "lora", l)][0]
                 for l in langs if (pool, b, "fedp2eft", l) in ours and (pool, b, "lora", l) in ours]
            pd = [paper[(pool, b, "fedp2eft", l)] - paper[(pool, b, "lora", l)]
                  for l in languages(paper, pool)]
            lines.append(f"| {pool} | {b} | {sum(1 for x in w if x)}/{len(langs)} | "
                         f"{sum(1 for x in pw if x)}/16 | {st.mean(d):+.2f} | {st.mean(pd):+.2f} |"
                         if d else f"| {pool} | {b} | – | – | – | – |")
    return lines


def baselines(ours, paper):
    lines = ["", "## AdaLoRA and BayesTune-LoRA against LoRA", "",
             "Languages where the method is at or below LoRA (paper: AdaLoRA and BayesTune-LoRA "
             "stay at or below LoRA), and the mean Δ to LoRA:", "",
             "| pool | budget | AdaLoRA ≤ LoRA | Δ | paper | BayesTune-LoRA ≤ LoRA | Δ | paper |",
             "|---|---|---|---|---|---|---|---|"]
    for pool in POOLS:
        langs = languages(ours, pool)
        for b in BUDGETS:
            if not any((pool, b, "lora", l) in ours for l in langs):
                lines.append(f"| {pool} | {b} | – | – | – | – | – | – |")
                continue
            cells = []
            for m in ["adalora", "bayestune_lora"]:
                le = [beats(ours, pool, b, m, l) is False for l in langs]
                d = [ours[(pool, b, m, l)][0] - ours[(pool, b, "lora", l)][0] for l in langs
                     if (pool, b, m, l) in ours]
                ple = [beats(paper, pool, b, m, l) is False for l in languages(paper, pool)]
                cells += [f"{sum(le)}/{len(langs)}", f"{st.mean(d):+.2f}" if d else "–",
                          f"{sum(ple)}/16"]
            lines.append(f"| {pool} | {b} | " + " | ".join(cells) + " |")
    return lines


def wins_table(wins, paper):
    lines = ["", "## Wins (best mean accuracy per language; ties credit every tied method)", "",
             "| pool | budget | " + " | ".join(LABEL[m] for m in METHODS) + " |",
             "|---|---|" + "---|" * len(METHODS)]
    for pool in POOLS:
        for b in BUDGETS:
            ours = [str(wins.get((pool, b, m), "–")) for m in METHODS]
            langs = languages(paper, pool)
            pw = []
            for m in METHODS:
                n = 0
                for l in langs:
                    best = max(paper[(pool, b, x, l)] for x in METHODS)
                    n += paper[(pool, b, m, l)] >= best - TIE
                pw.append(str(n))
            lines.append(f"| {pool} | {b} | " + " | ".join(f"{o} ({p})" for o, p in zip(ours, pw))
                         + " |")
    lines += ["", "Cells: ours (paper, ties counted for every tied method as our report does)."]
    return lines


def deltas(ours, paper):
    lines = ["", "## Per-language FedP2EFT − LoRA (points): ours / paper", ""]
    for pool in POOLS:
        langs = languages(ours, pool)
        lines += [f"### {pool}", "", "| budget | " + " | ".join(langs) + " |",
                  "|---|" + "---|" * len(langs)]
        for b in BUDGETS:
            cells = []
            for l in langs:
                o = ours.get((pool, b, "fedp2eft", l)), ours.get((pool, b, "lora", l))
                p = paper.get((pool, b, "fedp2eft", l)), paper.get((pool, b, "lora", l))
                oc = f"{o[0][0] - o[1][0]:+.1f}" if None not in o else "–"
                pc = f"{p[0] - p[1]:+.1f}" if None not in p else "–"
                cells.append(f"{oc} / {pc}")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


RUN_KEYS = None  # the exported run's instance keys (runs.csv); the store also keeps old ones


def store_instances(workdir):
    store = os.path.join(workdir, "store")
    for key in sorted(os.listdir(store)):
        if RUN_KEYS is not None and key not in RUN_KEYS:
            continue
        try:
            meta = json.load(open(os.path.join(store, key, "meta.json")))
        except (OSError, ValueError):
            continue
        yield meta, os.path.join(store, key, "out")


def module_kind(name):
    for k in ["query", "key", "value", "attention.output", "intermediate", "output.dense",
              "pooler", "classifier"]:
        if k in name:
            return k
    return name


def safetensors_f32(path):
    """Every f32 value of a safetensors file, in header order (standard library only)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data, out = json.loads(raw[8:8 + n]), raw[8 + n:], []
    for name, t in header.items():
        if name != "__metadata__" and t["dtype"] == "F32":
            a = array("f")
            a.frombytes(data[t["data_offsets"][0]:t["data_offsets"][1]])
            out += a.tolist()
    return out


def stage1_spread(workdir):
    """Per Stage-1 client: (min, max, distinct values at 1e-7) of its trained λ."""
    out = []
    for meta, path in store_instances(workdir):
        f = os.path.join(path, "lambda.safetensors")
        if meta.get("kind") == "lambda/bayestune" and os.path.exists(f):
            v = safetensors_f32(f)
            out.append((min(v), max(v), len({round(x, 7) for x in v}), len(v)))
    return out


def top_k(values, k):
    """Indices of the k largest values (ties: lower index first, as our rank selection)."""
    return set(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def selection_overlap(workdir, budget=2):
    """How much the kept ranks at `budget` depend on the client: per seed, the mean pairwise
    overlap |S_a ∩ S_b| / k of clients' top-k sets (k = budget × modules) for FedP2EFT (the
    PSG's λ) and BayesTune-LoRA (Stage 1's λ), and per client the overlap of the two methods'
    sets. 1.0 means every client keeps the same ranks."""
    psg, s1 = defaultdict(dict), defaultdict(dict)
    for meta, path in store_instances(workdir):
        p, seed = meta.get("params", {}), meta.get("seed")
        if meta.get("kind") == "lambda/bayestune":
            f = os.path.join(path, "lambda.safetensors")
            if os.path.exists(f):
                # hard-clamped as BayesTune-LoRA's personalization uses them (PAPER_NOTES §3)
                s1[seed][p.get("client")] = [min(max(x, 1e-4), 1000.0)
                                             for x in safetensors_f32(f)]
        elif meta.get("kind") == "personalize" and p.get("method") == "fedp2eft" \
                and p.get("budget") == budget:
            f = os.path.join(path, "lambdas.csv")
            if os.path.exists(f):
                rows = sorted(csv.DictReader(open(f)), key=lambda r: int(r["position"]))
                psg[seed][p.get("client")] = [float(r["lambda"]) for r in rows]
    out = []
    for seed in sorted(set(psg) | set(s1), key=lambda x: x or 0):
        sets = {}
        for name, lams in (("fedp2eft", psg[seed]), ("bayestune_lora", s1[seed])):
            if lams:
                k = budget * (len(next(iter(lams.values()))) // 32)  # r_max 32 per module
                sets[name] = {c: top_k(v, k) for c, v in lams.items()}
        row = {"seed": seed}
        for name, by_client in sets.items():
            cs = sorted(by_client)
            pairs = [(a, b) for i, a in enumerate(cs) for b in cs[i + 1:]]
            k = len(next(iter(by_client.values())))
            row[name] = st.mean(len(by_client[a] & by_client[b]) / k for a, b in pairs) \
                if pairs else None
        if len(sets) == 2:
            both = set(sets["fedp2eft"]) & set(sets["bayestune_lora"])
            k = len(next(iter(sets["fedp2eft"].values())))
            row["same_client"] = st.mean(len(sets["fedp2eft"][c] & sets["bayestune_lora"][c]) / k
                                         for c in both) if both else None
        out.append(row)
    return out


def changed_predictions(workdir):
    """(method, budget) -> (clients whose test predictions differ from LoRA's at that budget,
    test examples predicted differently, examples) — how far each method moved from LoRA."""
    preds = {}
    for meta, path in store_instances(workdir):
        p = meta.get("params", {})
        f = os.path.join(path, "predictions.csv")
        if meta.get("kind") == "personalize" and os.path.exists(f):
            preds[(p["method"], p["budget"], p["client"], meta.get("seed"))] = \
                [r["predicted"] for r in csv.DictReader(open(f))]
    out = defaultdict(lambda: [0, 0, 0])
    for (m, b, c, seed), v in preds.items():
        ref = preds.get(("lora", b, c, seed))
        if m == "lora" or ref is None:
            continue
        d = sum(x != y for x, y in zip(v, ref))
        out[(m, b)][0] += d > 0
        out[(m, b)][1] += d
        out[(m, b)][2] += len(v)
    return out


def diagnostics(workdir):
    psg, lam, upd, curve, ranks, wall = [], defaultdict(list), defaultdict(list), \
        defaultdict(list), defaultdict(lambda: defaultdict(list)), defaultdict(list)
    for meta, out in store_instances(workdir):
        kind, p = meta.get("kind"), meta.get("params", {})
        if meta.get("wall_seconds") is not None:
            wall[kind].append(meta["wall_seconds"])
        if kind == "psg/fedp2eft" and os.path.exists(os.path.join(out, "diagnostics.csv")):
            psg.append((meta.get("seed"), list(csv.DictReader(open(os.path.join(out, "diagnostics.csv"))))))
        if kind != "personalize":
            continue
        m, b = p.get("method"), p.get("budget")
        f = os.path.join(out, "lambdas.csv")
        if m == "fedp2eft" and b == 2 and os.path.exists(f):
            for r in csv.DictReader(open(f)):
                lam["all"].append(float(r["lambda"]))
        f = os.path.join(out, "updates.csv")
        if os.path.exists(f):
            upd[(m, b)].append(st.mean(float(r["update_norm"]) for r in csv.DictReader(open(f))))
        f = os.path.join(out, "curve.csv")
        if os.path.exists(f):
            rows = [float(r["loss"]) for r in csv.DictReader(open(f))]
            if rows:
                curve[m].append((rows[0], rows[-1], len(rows)))
        f = os.path.join(out, "ranks.csv")
        if m in ("fedp2eft", "bayestune_lora") and os.path.exists(f):
            for r in csv.DictReader(open(f)):
                ranks[(m, b)][module_kind(r["module"])].append(int(r["rank"]))
    lines = ["## Diagnostics", ""]
    for seed, rows in sorted(psg, key=lambda x: x[0] or 0):
        lines += [f"PSG training (seed {seed}), clients' means per round: PSG λ₀, the Stage-1 λ "
                  "learned from it, and the regression's per-element L1 before → after its steps:",
                  "", "| round | PSG λ₀ | Stage-1 λ | L1 before | L1 after |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['round']} | {float(r['psg_lambda_mean']):.4g} | "
                         f"{float(r['stage1_lambda_mean']):.4g} | "
                         f"{float(r['regression_l1_first']):.4g} | {float(r['regression_l1_last']):.4g} |")
        lines.append("")
    spread = stage1_spread(workdir)
    if spread:
        lines += [f"Stage 1 (BayesTune-LoRA's λ, {len(spread)} clients): trained λ from "
                  f"{min(s[0] for s in spread):.6g} to {max(s[1] for s in spread):.6g}; distinct "
                  f"values (to 1e-7) per client: {min(s[2] for s in spread)}–"
                  f"{max(s[2] for s in spread)} of {spread[0][3]}.", ""]
    overlap = selection_overlap(workdir)
    if overlap:
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines += ["Do the kept ranks depend on the client? Mean pairwise overlap of clients' "
                  "top-k rank sets at budget 2 (k = 2 × 74; 1.000 = every client keeps the same "
                  "ranks), and the overlap of FedP2EFT's set with the same client's "
                  "BayesTune-LoRA set:", "",
                  "| seed | FedP2EFT between clients | BayesTune-LoRA between clients | "
                  "FedP2EFT vs BayesTune-LoRA, same client |", "|---|---|---|---|"]
        for r in overlap:
            lines.append(f"| {r['seed']} | {f(r.get('fedp2eft'))} | {f(r.get('bayestune_lora'))} "
                         f"| {f(r.get('same_client'))} |")
        lines.append("")
    moved = changed_predictions(workdir)
    if moved:
        lines += ["Test predictions that differ from LoRA's at the same budget and client:", "",
                  "| method | budget | clients with any change | examples changed |",
                  "|---|---|---|---|"]
        for (m, b) in sorted(moved):
            c, d, n = moved[(m, b)]
            lines.append(f"| {LABEL[m]} | {b} | {c} | {d}/{n} |")
        lines.append("")
    if lam["all"]:
        v = lam["all"]
        lines += [f"FedP2EFT's λ at personalization (budget 2, all clients and modules): "
                  f"min {min(v):.3g}, median {st.median(v):.3g}, max {max(v):.3g}, "
                  f"{sum(1 for x in v if x > 1e-3)}/{len(v)} above 1e-3.", ""]
    if ranks:
        kinds = sorted({k for d in ranks.values() for k in d})
        lines += ["Mean kept rank per module type (FedP2EFT / BayesTune-LoRA):", "",
                  "| method | budget | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for (m, b) in sorted(ranks):
            lines.append(f"| {LABEL[m]} | {b} | " + " | ".join(
                f"{st.mean(ranks[(m, b)][k]):.2f}" if ranks[(m, b)][k] else "–" for k in kinds) + " |")
        lines.append("")
    if upd:
        lines += ["Size of the merged update, mean over modules and clients of ‖ΔW‖_F:", "",
                  "| method | " + " | ".join(f"r_b {b}" for b in BUDGETS) + " |",
                  "|---|" + "---|" * len(BUDGETS)]
        for m in METHODS:
            lines.append(f"| {LABEL[m]} | " + " | ".join(
                f"{st.mean(upd[(m, b)]):.3g}" if upd[(m, b)] else "–" for b in BUDGETS) + " |")
        lines.append("")
    if curve:
        lines += ["Learning curves: mean loss of the first and last optimiser step of the "
                  "personalization fine-tune:", "", "| method | first step | last step | steps (mean) |",
                  "|---|---|---|---|"]
        for m in METHODS:
            if curve[m]:
                lines.append(f"| {LABEL[m]} | {st.mean(c[0] for c in curve[m]):.4g} | "
                             f"{st.mean(c[1] for c in curve[m]):.4g} | "
                             f"{st.mean(c[2] for c in curve[m]):.3g} |")
        lines.append("")
    return lines


def main():
    global RUN_KEYS
    export, paper_csv, workdir = sys.argv[1:4]
    runs = os.path.join(export, "runs.csv")
    if os.path.exists(runs):
        RUN_KEYS = {r["key"] for r in csv.DictReader(open(runs))}
    ours, wins = read_ours(export)
    paper = read_paper(paper_csv)
    out = headline(ours, paper) + baselines(ours, paper) + wins_table(wins, paper) + \
        deltas(ours, paper) + diagnostics(workdir)
    print("\n".join(out))


if __name__ == "__main__":
    main()
