#!/usr/bin/env python3
"""Turns the benchmark results into docs/benchmarks.md and docs/benchmarks/*.png.

Inputs (contract: e2e/bench/report/README.md):
  OUT/dataplane.json, OUT/control.json   written by e2e/bench/dataplane.sh and control.sh
  CRITERION_DIR/<group>/<bench>/new/{estimates,benchmark}.json   written by `cargo bench`
  OUT/cargo-bench.log                    the bench output (map sizes are printed there)
  OUT/limits.md, docs/benchmarks.d/*.md  "what limits it" for unmet targets
  OUT/status.json                        which parts of run-all.sh ran and how they ended

Any input may be missing: its section then says so instead of showing figures.
"""

import argparse
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys

SYSTEMS = ["veth", "wireguard-go", "tailscaled", "meshscale-sidecar"]
SIDECAR = "meshscale-sidecar"
PLACEHOLDER = "**[PLACEHOLDER — coordinator: fill in what limits this target]**"

# (key, label, unit, higher_is_better)
DP_FIGURES = [
    ("tcp1_fwd_mbps", "TCP 1 stream, forward", "Mbit/s", True),
    ("tcp1_rev_mbps", "TCP 1 stream, reverse", "Mbit/s", True),
    ("tcp4_fwd_mbps", "TCP 4 streams, forward", "Mbit/s", True),
    ("tcp4_rev_mbps", "TCP 4 streams, reverse", "Mbit/s", True),
    ("udp_pps", "UDP 1,400 B, packets/s", "pkt/s", True),
    ("udp_mbps", "UDP 1,400 B, throughput", "Mbit/s", True),
    ("udp_loss_pct", "UDP loss", "%", False),
    ("lat_idle_p50_ms", "RTT idle p50", "ms", False),
    ("lat_idle_p99_ms", "RTT idle p99", "ms", False),
    ("lat_load_p50_ms", "RTT under load p50", "ms", False),
    ("lat_load_p99_ms", "RTT under load p99", "ms", False),
    ("cpu_s_per_gb", "CPU seconds per GB (all agents)", "s/GB", False),
    ("rss_idle_kib", "agent RSS idle", "MiB", False),
    ("rss_load_kib", "agent RSS under load", "MiB", False),
    ("up_to_first_packet_ms", "`up` to first packet (median of starts)", "ms", False),
    ("tcp1_fwd_allow_all_mbps", "TCP 1 stream, allow-all policy (filter row)", "Mbit/s", True),
    ("tcp1_fwd_filter20_mbps", "TCP 1 stream, 20-entry ACL (filter row)", "Mbit/s", True),
]

PROP_KINDS = ["endpoint", "join", "leave", "policy_change"]


def allow_all(r):
    """Runs without an access policy (the targets and plots are about these)."""
    return r.get("policy", "allow-all") == "allow-all"


def run_label(r):
    """The database, and the policy when there is one: `sqlite (acl-20)`."""
    return r.get("db") if allow_all(r) else f"{r.get('db')} ({r.get('policy')})"


# ---------------------------------------------------------------- inputs

def load_json(path):
    """(data, problem): problem is a sentence when the file is missing or unreadable."""
    if not os.path.exists(path):
        return None, f"`{os.path.basename(path)}` was not produced"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"`{os.path.basename(path)}` is unreadable: {e}"


def load_criterion(crit_dir):
    """Every benchmark under criterion's output dir: group, name, ns (mean, median), throughput."""
    rows = []
    if not crit_dir or not os.path.isdir(crit_dir):
        return rows
    for bench_json in sorted(glob.glob(os.path.join(crit_dir, "**", "new", "benchmark.json"), recursive=True)):
        new_dir = os.path.dirname(bench_json)
        try:
            with open(bench_json, encoding="utf-8") as f:
                meta = json.load(f)
            with open(os.path.join(new_dir, "estimates.json"), encoding="utf-8") as f:
                est = json.load(f)
        except (OSError, ValueError):
            continue
        thr = meta.get("throughput") or {}
        kind, amount = None, None
        for k in ("Bytes", "BytesDecimal", "Elements"):
            if k in thr:
                kind, amount = ("elements" if k == "Elements" else "bytes"), thr[k]
        name = meta.get("function_id") or ""
        if meta.get("value_str"):
            name = f"{name}/{meta['value_str']}" if name else meta["value_str"]
        rows.append({
            "group": meta.get("group_id", "?"),
            "name": name,
            "mean_ns": est.get("mean", {}).get("point_estimate"),
            "median_ns": est.get("median", {}).get("point_estimate"),
            "mean_lo": est.get("mean", {}).get("confidence_interval", {}).get("lower_bound"),
            "mean_hi": est.get("mean", {}).get("confidence_interval", {}).get("upper_bound"),
            "kind": kind,
            "amount": amount,
        })
    # Natural order, so that sizes read 64, 256, 1024 rather than 1024, 256, 64.
    natural = lambda t: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", t)]
    rows.sort(key=lambda r: (r["group"], natural(r["name"])))
    return rows


def load_sizes(log_path):
    """Lines the mapper bench prints: `mapper-size full/10000: json N bytes, zstd M bytes`."""
    sizes = []
    if not log_path or not os.path.exists(log_path):
        return sizes
    pat = re.compile(r"mapper-size (\S+): json (\d+) bytes, zstd (\d+) bytes")
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = pat.search(line)
            if m and m.group(1) not in [s[0] for s in sizes]:
                sizes.append((m.group(1), int(m.group(2)), int(m.group(3))))
    return sizes


def load_limits(paths):
    """`## <target-id>` sections of markdown files → {target-id: text}."""
    limits = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        current, lines = None, []
        for line in text.splitlines() + ["## "]:
            m = re.match(r"^##\s+(\S*)\s*$", line)
            if m:
                if current and "\n".join(lines).strip():
                    limits[current] = (limits.get(current, "") + "\n" + "\n".join(lines).strip()).strip()
                current, lines = m.group(1) or None, []
            elif current:
                lines.append(line)
    return limits


def local_machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
            mem = f"{kib / 1048576:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "memory": mem}


def command_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------- formatting

def num(v, digits=None):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if not isinstance(v, (int, float)):
        return str(v)
    if digits is None and isinstance(v, int):
        digits = 0
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 0.1 else 3
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def fmt_ns(ns):
    if ns is None:
        return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_rate(row):
    ns = row["median_ns"]
    if not ns or not row["amount"]:
        return "—"
    per_s = row["amount"] / (ns / 1e9)
    if row["kind"] == "bytes":
        return f"{per_s / 1048576:,.1f} MiB/s"
    if per_s >= 1e6:
        return f"{per_s / 1e6:,.2f} M elem/s"
    return f"{per_s / 1e3:,.1f} K elem/s"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- targets

class Target:
    def __init__(self, tid, text, measured, met):
        self.tid, self.text, self.measured, self.met = tid, text, measured, met


def dp_targets(dp):
    systems = (dp or {}).get("systems") or {}
    sc, ts, wg, veth = (systems.get(k) or {} for k in (SIDECAR, "tailscaled", "wireguard-go", "veth"))
    out = []

    def tcp_target(tid, text, other, other_name, want):
        rs = [ratio(sc.get(k), other.get(k)) for k in ("tcp1_fwd_mbps", "tcp1_rev_mbps")]
        if any(r is None for r in rs):
            out.append(Target(tid, text, "not measured", None))
            return
        out.append(Target(tid, text,
                          f"forward {rs[0]:.2f}×, reverse {rs[1]:.2f}× {other_name} "
                          f"({num(sc.get('tcp1_fwd_mbps'))} / {num(sc.get('tcp1_rev_mbps'))} Mbit/s)",
                          min(rs) >= want))

    tcp_target("tcp1-vs-tailscaled", "Sidecar single-stream TCP ≥ 1.0× tailscaled", ts, "tailscaled", 1.0)
    tcp_target("tcp1-vs-wireguard-go", "Sidecar single-stream TCP ≥ 1.5× wireguard-go", wg, "wireguard-go", 1.5)

    rss = sc.get("rss_idle_kib")
    out.append(Target("rss-idle", "Sidecar RSS idle < 15 MiB",
                      "not measured" if rss is None else f"{rss / 1024:.1f} MiB",
                      None if rss is None else rss < 15 * 1024))

    # Added latency: the tunnel's RTT minus raw veth's, in the same run.
    parts, met = [], True
    for key, label in (("lat_idle_p50_ms", "idle p50"), ("lat_load_p50_ms", "loaded p50")):
        base = veth.get(key)
        a, b = sc.get(key), ts.get(key)
        if a is None or b is None:
            met = None
            parts.append(f"{label}: not measured")
            continue
        if base is not None:
            a, b = a - base, b - base
        parts.append(f"{label}: sidecar +{a * 1000:.0f} µs vs tailscaled +{b * 1000:.0f} µs")
        if met is not None:
            met = met and a <= b
    out.append(Target("latency", "Sidecar added latency no worse than tailscaled", "; ".join(parts), met))

    # Issue 11: a pod waits for this in its startup probe, every start.
    starts = sc.get("up_to_first_packet_runs_ms") or []
    up = sc.get("up_to_first_packet_ms")
    if starts:
        out.append(Target("pod-start", "Sidecar `up` to first packet < 300 ms on a LAN, every start",
                          f"worst {num(max(starts))} ms, median {num(up)} ms over {len(starts)} starts",
                          max(starts) < 300))
    else:
        out.append(Target("pod-start", "Sidecar `up` to first packet < 300 ms on a LAN, every start",
                          "not measured" if up is None else f"{num(up)} ms (one start)",
                          None if up is None else up < 300))
    # Issue 13: the packet filter costs the sidecar little.
    base, filt = sc.get("tcp1_fwd_allow_all_mbps"), sc.get("tcp1_fwd_filter20_mbps")
    r = ratio(filt, base)
    out.append(Target("filter-cost", "Sidecar TCP with a 20-rule filter within 5% of allow-all",
                      "not measured" if r is None else
                      f"{r:.3f}× ({num(filt)} vs {num(base)} Mbit/s, "
                      f"{num(sc.get('filter20_matches'))} compiled entries)",
                      None if r is None else r >= 0.95))
    return out


def runs_at(ctl, n, db=None):
    return [r for r in (ctl or {}).get("runs") or []
            if r.get("n") == n and (db is None or r.get("db") == db) and allow_all(r)]


def live_sessions(r):
    """Sessions alive at the end of a run that did not hold all N (from its notes)."""
    m = re.search(r"(\d+) of (\d+) sessions alive", r.get("notes") or "")
    return int(m.group(1)) if m else None


def partial(r):
    """A figure taken at fewer sessions than N says so, and cannot meet an at-N target."""
    if r.get("held"):
        return ""
    k = live_sessions(r)
    return f" (over {k:,} live sessions, not {r.get('n'):,})" if k is not None else " (not all nodes held)"


def ctl_targets(ctl):
    out = []
    runs = runs_at(ctl, 10000)

    held = [f"{r.get('db')}: {'held' if r.get('held') else 'NOT held'}" for r in runs]
    out.append(Target("held-10000", "10,000 nodes held on this machine",
                      "; ".join(held) if held else "not measured",
                      None if not runs else all(r.get("held") for r in runs)))

    parts, met = [], (True if runs else None)
    for r in runs:
        prop = r.get("propagation") or {}
        p99s = {k: (prop.get(k) or {}).get("p99_ms") for k in PROP_KINDS if prop.get(k)}
        worst = max((v for v in p99s.values() if v is not None), default=None)
        parts.append(f"{r.get('db')}: " + ", ".join(f"{k} {num(v)} ms" for k, v in p99s.items()) + partial(r))
        if not r.get("held") and worst is not None and worst < 1000:
            met = None if met is not False else False
        elif worst is None:
            met = None if met is not False else False
        elif met is not None:
            met = met and worst < 1000
    out.append(Target("propagation-p99", "One change reaches all 10,000 sessions in < 1 s p99",
                      "; ".join(parts) if parts else "not measured", met))

    parts, met = [], (True if runs else None)
    for r in runs:
        rss = r.get("server_rss_kib")
        parts.append(f"{r.get('db')}: {num(None if rss is None else rss / 1024)} MiB"
                     f" (peak {num(None if r.get('server_rss_peak_kib') is None else r['server_rss_peak_kib'] / 1024)} MiB)"
                     + partial(r))
        if rss is None or (not r.get("held") and rss < 300 * 1024):
            met = None
        elif met is not None:
            met = met and rss < 300 * 1024
    out.append(Target("server-rss", "Server RSS < 300 MiB at 10,000 nodes",
                      "; ".join(parts) if parts else "not measured", met))

    sq = runs_at(ctl, 10000, "sqlite")
    rate = sq[0].get("register_per_s") if sq else None
    out.append(Target("register-rate", "Registration ≥ 1,000 nodes/s with SQLite (N = 10,000)",
                      "not measured" if rate is None else f"{rate:,.0f} nodes/s",
                      None if rate is None else rate >= 1000))
    return out


def targets_section(targets, limits):
    lines = ["## Targets", "",
             "Issue 6's targets, measured in this run. A target is met only when measured and within its bound.", ""]
    rows = []
    for t in targets:
        status = "✅ met" if t.met else ("❌ not met" if t.met is False else "⚠️ not measured")
        rows.append([t.text, t.measured, status])
    lines.append(table(["target", "measured", "status"], rows))
    unmet = [t for t in targets if t.met is False]
    if unmet:
        lines += ["", "### What limits the targets not met", ""]
        for t in unmet:
            why = limits.get(t.tid)
            lines.append(f"- **{t.text}** (`{t.tid}`): " + (why.replace("\n", " ") if why else PLACEHOLDER))
    unmeasured = [t for t in targets if t.met is None]
    if unmeasured:
        lines += ["", "Not measured in this run (the part that measures it is marked missing below): "
                  + ", ".join(f"`{t.tid}`" for t in unmeasured) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------- sections

def dataplane_section(dp, problem):
    lines = ["## Data plane", ""]
    if dp is None:
        return "\n".join(lines + [f"**Missing:** {problem}; no data-plane figures in this report.", ""])
    systems = dp.get("systems") or {}
    lines.append("Two network namespaces over a veth pair; every tunnel measured in the same run "
                 "(e2e/bench/dataplane.sh). Each cell: the figure, then its ratio to wireguard-go "
                 "and to tailscaled (for latency, loss, CPU and memory lower is better).")
    lines.append("")
    header = ["figure", "unit"] + [f"`{s}`" for s in SYSTEMS]
    rows = []
    for key, label, unit, _ in DP_FIGURES:
        row = [label, unit]
        for s in SYSTEMS:
            fig = (systems.get(s) or {}).get(key)
            if fig is None:
                row.append("—")
                continue
            # RSS is recorded in KiB and shown in MiB; ratios are unit-free.
            shown = num(fig / 1024, 1) if key.endswith("_kib") else num(fig)
            rw = ratio(fig, (systems.get("wireguard-go") or {}).get(key))
            rt = ratio(fig, (systems.get("tailscaled") or {}).get(key))
            extra = []
            if s != "wireguard-go":
                extra.append(f"{fmt_ratio(rw)} wg-go")
            if s != "tailscaled":
                extra.append(f"{fmt_ratio(rt)} tsd")
            row.append(shown + "<br>" + ", ".join(extra))
        rows.append(row)
    lines.append(table(header, rows))
    lines += ["", "<details><summary>Raw TCP runs (Mbit/s, 3 × 10 s each)</summary>", ""]
    raw_rows = []
    for s in SYSTEMS:
        for k, v in sorted(((systems.get(s) or {}).get("tcp_runs") or {}).items()):
            raw_rows.append([s, k, ", ".join(num(x) for x in (v or []))])
    lines.append(table(["system", "test", "runs"], raw_rows) if raw_rows else "No raw runs recorded.")
    lines += ["", "</details>", ""]
    start_rows = [[s, ", ".join(num(x) for x in (systems.get(s) or {}).get("up_to_first_packet_runs_ms") or [])]
                  for s in SYSTEMS if (systems.get(s) or {}).get("up_to_first_packet_runs_ms")]
    if start_rows:
        lines += ["<details><summary>`up` to first packet, every start (ms, in order)</summary>", "",
                  table(["system", "starts"], start_rows), "", "</details>", ""]
    notes = dp.get("notes") or []
    if isinstance(notes, str):
        notes = [notes]
    for s in SYSTEMS:
        n = (systems.get(s) or {}).get("notes")
        if n:
            notes.append(f"{s}: {n}")
    if notes:
        lines += ["Notes from the run:", ""] + [f"- {n}" for n in notes] + [""]
    lines.append("![TCP and UDP throughput by system](benchmarks/throughput.png)")
    lines.append("")
    return "\n".join(lines)


def control_section(ctl, problem):
    lines = ["## Control plane", ""]
    if ctl is None:
        return "\n".join(lines + [f"**Missing:** {problem}; no control-plane figures in this report.", ""])
    runs = sorted(ctl.get("runs") or [], key=lambda r: (r.get("db") != "sqlite", r.get("db") or "", r.get("n") or 0,
                                                         r.get("policy") or ""))
    lines.append("N simulated nodes speaking the real protocol (Noise, registration with a reusable key, "
                 "one streaming map session each) from one load-generator process on loopback against "
                 "`meshscale serve` (e2e/bench/control.sh, bench/loadgen).")
    lines += ["", "### Registration, memory and cost per change", ""]
    rows = []
    for r in runs:
        mib = lambda k: None if r.get(k) is None else r[k] / 1024
        rows.append([run_label(r), num(r.get("n")), num(r.get("held")), num(r.get("register_per_s")),
                     num(r.get("all_mapped_s")), num(mib("server_rss_kib")), num(mib("server_rss_peak_kib")),
                     num(r.get("server_cpu_s_per_change"), 4), num(r.get("server_cpu_s_per_policy_change"), 4),
                     num(r.get("bytes_per_change")), num(r.get("nodes_list_ms"))])
    lines.append(table(["db", "N", "all held", "register nodes/s", "all mapped (s)", "server RSS (MiB)",
                        "RSS peak (MiB)", "CPU s / change", "CPU s / policy change", "bytes / change",
                        "`nodes list` (ms)"], rows))
    lines += ["", "### Propagation: one change until every session has the delta (ms)", ""]
    rows = []
    for r in runs:
        prop = r.get("propagation") or {}
        row = [run_label(r), num(r.get("n"))]
        for k in PROP_KINDS:
            p = prop.get(k) or {}
            row.append(f"{num(p.get('p50_ms'))} / {num(p.get('p99_ms'))} / {num(p.get('max_ms'))}"
                       f" (n={num(p.get('samples'))})")
        rows.append(row)
    lines.append(table(["db", "N"] + [f"{k}: p50 / p99 / max" for k in PROP_KINDS], rows))
    notes = [f"{run_label(r)} N={r.get('n')}: {r['notes']}" for r in runs if r.get("notes")]
    if ctl.get("notes"):
        notes = ([ctl["notes"]] if isinstance(ctl["notes"], str) else list(ctl["notes"])) + notes
    if notes:
        lines += ["", "Notes from the run:", ""] + [f"- {n}" for n in notes]
    lines += ["", "![Propagation p50/p99 against N](benchmarks/propagation.png)", "",
              "![Server RSS against N](benchmarks/server_rss.png)", "",
              "![Registration rate against N](benchmarks/registration.png)", ""]
    return "\n".join(lines)


def micro_section(crit, sizes, problem):
    lines = ["## Micro-benchmarks (`cargo bench`)", ""]
    if not crit:
        return "\n".join(lines + [f"**Missing:** {problem or 'no criterion results found'}.", ""])
    lines.append("criterion, short runs (see the `config()` of each bench); time per iteration, "
                 "throughput from the median. Benches: `control/benches/mapper.rs` (map responses for "
                 "10,000 peers through the server's `node_view` and `Frame`), `ts2021/benches/transport.rs` "
                 "(Noise transport records), `control/benches/derp.rs` (DERP frames and the relay path over "
                 "in-memory pipes), `sidecar/benches/wireguard.rs` (boringtun `Tunn` after a handshake).")
    lines.append("")
    rows = [[f"`{r['group']}`", f"`{r['name']}`", fmt_ns(r["mean_ns"]), fmt_ns(r["median_ns"]), fmt_rate(r)]
            for r in crit]
    lines.append(table(["group", "bench", "mean", "median", "throughput"], rows))
    if sizes:
        lines += ["", "Encoded map sizes (the bytes each receiver is sent):", ""]
        lines.append(table(["message", "JSON", "zstd (level 1)"],
                           [[f"`{n}`", f"{j:,} B", f"{z:,} B"] for n, j, z in sizes]))
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots

def make_plots(dp, ctl, out_dir):
    """Writes the PNGs it has data for; returns the names it wrote."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    # A plot with nothing to show is removed so the report never shows a stale one.
    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        written.append(name)

    systems = (dp or {}).get("systems") or {}
    keys = [("tcp1_fwd_mbps", "TCP ×1 fwd"), ("tcp1_rev_mbps", "TCP ×1 rev"),
            ("tcp4_fwd_mbps", "TCP ×4 fwd"), ("tcp4_rev_mbps", "TCP ×4 rev"), ("udp_mbps", "UDP 1,400 B")]
    present = [s for s in SYSTEMS if systems.get(s)]
    if present:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        width = 0.8 / len(present)
        for i, s in enumerate(present):
            vals = [(systems[s].get(k) or 0) for k, _ in keys]
            bars = ax.bar([x + i * width for x in range(len(keys))], vals, width, label=s)
            ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=6, rotation=90, padding=2)
        ax.set_xticks([x + width * (len(present) - 1) / 2 for x in range(len(keys))], [l for _, l in keys])
        ax.set_ylabel("Mbit/s")
        ax.set_title("Throughput by system (same machine, same run)")
        ax.legend(fontsize=8)
        ax.margins(y=0.15)
        save(fig, "throughput.png")

    runs = [r for r in (ctl or {}).get("runs") or [] if allow_all(r)]
    dbs = sorted({r.get("db") for r in runs if r.get("db")}, key=lambda d: (d != "sqlite", d))

    def series(db, getter):
        pts = sorted((r["n"], getter(r)) for r in runs if r.get("db") == db and r.get("n") is not None)
        return [p for p in pts if p[1] is not None]

    if runs and dbs:
        # One panel per database, so that p50 and p99 of each kind stay readable.
        fig, axes = plt.subplots(1, len(dbs), figsize=(6 * len(dbs), 4.5), sharey=True, squeeze=False)
        drawn = False
        for ax, db in zip(axes[0], dbs):
            for kind, color in (("endpoint", "tab:blue"), ("join", "tab:green"), ("leave", "tab:orange")):
                for q, style, marker in (("p50_ms", "-", "o"), ("p99_ms", "--", "^")):
                    pts = series(db, lambda r: ((r.get("propagation") or {}).get(kind) or {}).get(q))
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, color=color,
                                label=f"{kind} {q[:3]}")
                        drawn = True
            ax.axhline(1000, color="red", linewidth=0.8, linestyle="-.", label="target: p99 < 1 s")
            ax.set_title(f"{db}")
            ax.set_xlabel("N (nodes, one map session each)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("ms until every session has the delta")
        fig.suptitle("Propagation of one change against N")
        if drawn:
            save(fig, "propagation.png")
        else:
            plt.close(fig)

        for name, title, ylabel, getters, target in (
            ("server_rss.png", "Server RSS against N", "MiB",
             [("RSS", lambda r: None if r.get("server_rss_kib") is None else r["server_rss_kib"] / 1024),
              ("peak", lambda r: None if r.get("server_rss_peak_kib") is None else r["server_rss_peak_kib"] / 1024)],
             (300, "target < 300 MiB at 10,000")),
            ("registration.png", "Registration rate against N", "nodes/s",
             [("", lambda r: r.get("register_per_s"))], (1000, "target ≥ 1,000/s (SQLite)")),
        ):
            fig, ax = plt.subplots(figsize=(8, 4.5))
            drawn = False
            for db in dbs:
                for label, g in getters:
                    pts = series(db, g)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                label=f"{db} {label}".strip())
                        drawn = True
            if drawn:
                ax.axhline(target[0], color="red", linewidth=0.8, linestyle="-.", label=target[1])
                ax.set_xlabel("N (nodes)")
                ax.set_ylabel(ylabel)
                ax.set_title(title)
                ax.set_ylim(bottom=0)
                ax.legend(fontsize=8)
                save(fig, name)
            else:
                plt.close(fig)
    for stale in ("throughput.png", "propagation.png", "server_rss.png", "registration.png"):
        if stale not in written and os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    return written


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the directory the benchmark scripts wrote into")
    ap.add_argument("--criterion", help="criterion's output dir ($CARGO_TARGET_DIR/criterion)")
    ap.add_argument("--docs", default="docs", help="where benchmarks.md and benchmarks/ go")
    ap.add_argument("--repo", default=".", help="repository root (for the git revision)")
    args = ap.parse_args()

    dp, dp_problem = load_json(os.path.join(args.out, "dataplane.json"))
    ctl, ctl_problem = load_json(os.path.join(args.out, "control.json"))
    status, _ = load_json(os.path.join(args.out, "status.json"))
    status = status or {}
    crit = load_criterion(args.criterion)
    sizes = load_sizes(os.path.join(args.out, "cargo-bench.log"))
    limit_files = [os.path.join(args.out, "limits.md")] + sorted(
        glob.glob(os.path.join(args.docs, "benchmarks.d", "*.md")))
    limits = load_limits(limit_files)

    for name, part in (("dataplane", "dataplane.json"), ("control", "control.json")):
        st = status.get(name)
        if st and not st.startswith("ok"):
            if name == "dataplane":
                dp_problem = f"{dp_problem or 'its file exists'}; `e2e/bench/dataplane.sh` ended with: {st}"
            else:
                ctl_problem = f"{ctl_problem or 'its file exists'}; `e2e/bench/control.sh` ended with: {st}"
    micro_problem = None
    if status.get("cargo_bench") and not status["cargo_bench"].startswith("ok"):
        micro_problem = f"`cargo bench` ended with: {status['cargo_bench']}"

    machine = dict(local_machine())
    for src in (ctl, dp):
        machine.update({k: v for k, v in ((src or {}).get("machine") or {}).items() if v})
    versions = {}
    for src in (ctl, dp):
        versions.update({k: v for k, v in ((src or {}).get("versions") or {}).items() if v})
    rev = command_version(["git", "-C", args.repo, "describe", "--always", "--dirty"])
    if rev:
        versions.setdefault("meshscale (git)", rev)
    rustc = command_version(["rustc", "--version"])
    if rustc:
        versions.setdefault("rustc", rustc)

    # The libraries the micro-benchmarks measure, as locked.
    try:
        with open(os.path.join(args.repo, "Cargo.lock"), encoding="utf-8") as f:
            lock = f.read()
        for crate in ("boringtun", "snow", "zstd", "serde_json", "criterion"):
            m = re.search(r'name = "' + crate + r'"\nversion = "([^"]+)"', lock)
            if m:
                versions.setdefault(f"{crate} (crate)", m.group(1))
    except OSError:
        pass

    targets = dp_targets(dp) + ctl_targets(ctl)

    try:
        plots = make_plots(dp, ctl, os.path.join(args.docs, "benchmarks"))
    except ImportError as e:
        print(f"report: no plots ({e})", file=sys.stderr)
        plots = []

    parts = [
        "# Benchmarks",
        "",
        "Generated by `e2e/bench/run-all.sh` (report: `e2e/bench/report/report.py`); do not edit by hand. "
        "Every figure comes from one run on the machine below.",
        "",
        targets_section(targets, limits),
        "",
        "## Machine and versions",
        "",
        table(["", ""], [["CPU", machine.get("cpu") or "—"], ["cores", machine.get("cores") or "—"],
                         ["kernel", machine.get("kernel") or "—"], ["memory", machine.get("memory") or "—"]]),
        "",
        table(["program", "version"], [[f"`{k}`", str(v)] for k, v in sorted(versions.items())]),
        "",
    ]
    try:
        with open(os.path.join(args.out, "notes.md"), encoding="utf-8") as f:
            run_notes = f.read().strip()
    except OSError:
        run_notes = ""
    if run_notes:
        parts += ["Notes on this run:", "", run_notes, ""]
    if status:
        parts += ["Parts of this run (`OUT/status.json`): " + "; ".join(
            f"{k}: {v}" for k, v in status.items() if k != "report") + ".", ""]
    methods = sorted(glob.glob(os.path.join(args.docs, "benchmarks.d", "*.md")))
    if methods:
        parts += ["Method and details: " + ", ".join(
            f"[{os.path.basename(m)}](benchmarks.d/{os.path.basename(m)})" for m in methods) + ".", ""]
    parts += [dataplane_section(dp, dp_problem), control_section(ctl, ctl_problem),
              micro_section(crit, sizes, micro_problem)]
    missing_plots = [p for p in ("throughput.png", "propagation.png", "server_rss.png", "registration.png")
                     if p not in plots]
    text = "\n".join(parts).rstrip() + "\n"
    for p in missing_plots:
        text = re.sub(r"!\[[^\]]*\]\(benchmarks/" + re.escape(p) + r"\)",
                      f"*(plot `{p}` not drawn: no data for it in this run)*", text)
    os.makedirs(args.docs, exist_ok=True)
    with open(os.path.join(args.docs, "benchmarks.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(f"report: wrote {os.path.join(args.docs, 'benchmarks.md')} and {len(plots)} plot(s)")


if __name__ == "__main__":
    main()
