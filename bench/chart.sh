#!/usr/bin/env bash
# Turn kraken-bench --json lines (one per run, as bench/compare.sh --raw writes them) into
# PNG charts, one per scenario: throughput bars per server on the left, latency p50/p99
# bars (log scale) on the right; churn shows acknowledged ops/s, conns shows the server's
# RSS growth per connection and the connect time. Runs with the same label in the same
# scenario (repeats) are shown as their median. JSON is read with python3; the charts are
# drawn by gnuplot (both installed with apt-get when missing).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/chart.sh [options] FILE.jsonl

Options:
  --out DIR        directory the PNGs are written to (default: FILE without .jsonl,
                   followed by -charts, next to FILE); created when missing
  --title TEXT     added to every chart's title (e.g. the date and machine)
  --width PX       width of each PNG (default 1000; height is 0.42 of it)
  -h, --help       this text

Writes DIR/SCENARIO.png for each scenario present in FILE (fanout, broadcast, latency,
churn, conns, retro) and prints each path written. A line's label is its "label" field when
present (compare.sh adds one), else its proto, followed by "batch N" when it used --batch N.
EOF
}

out=""
title=""
width=1000
file=""
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --title) title=$2; shift 2 ;;
    --width) width=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "chart.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) [ -n "$file" ] && { echo "chart.sh: one input file only" >&2; exit 2; }; file=$1; shift ;;
    esac
done
if [ -z "$file" ]; then
    usage >&2
    exit 2
fi
if [ ! -r "$file" ]; then
    echo "chart.sh: cannot read $file" >&2
    exit 2
fi
case "$width" in '' | *[!0-9]*) echo "chart.sh: --width takes a number of pixels" >&2; exit 2 ;; esac
if [ -z "$out" ]; then
    stem=${file%.jsonl}
    stem=${stem%.json}
    out="$stem-charts"
fi

# --- python3 and gnuplot from the distribution, when missing ------------------------------
need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v gnuplot >/dev/null || need_pkgs+=(gnuplot-nox)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "chart.sh: installing ${need_pkgs[*]} with apt-get" >&2
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2 ||
        { "${sudo_cmd[@]}" apt-get update >&2 &&
          "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2; }
fi

# pngcairo draws antialiased text; the plain png terminal is the fallback.
term="png"
if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
    term="pngcairo"
fi

mkdir -p "$out"
work=$(mktemp -d /tmp/kraken-chart.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The python part writes, per scenario, a data file and a gnuplot script into $work and
# prints "SCENARIO SCRIPT" lines; gnuplot then runs each script.
python3 - "$file" "$work" "$out" "$term" "$width" "$title" >"$work/list" <<'PYEOF'
import json, os, statistics, sys

path, work, out, term, width, title = sys.argv[1:7]
width = int(width)
height = int(width * 0.42)

runs = {}      # scenario -> label -> [record]
order = {}     # scenario -> [label] in first-seen order
scen_order = []
with open(path) as f:
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            sys.exit(f"chart.sh: {path}:{n}: not a JSON line ({e})")
        sc = r.get("scenario")
        if not sc:
            sys.exit(f"chart.sh: {path}:{n}: no \"scenario\" field")
        label = r.get("label")
        if not label:
            label = r.get("proto", "?")
            if int(r.get("batch", 1) or 1) > 1:
                label += f" batch {r['batch']}"
        if sc not in runs:
            runs[sc] = {}
            order[sc] = []
            scen_order.append(sc)
        if label not in runs[sc]:
            runs[sc][label] = []
            order[sc].append(label)
        runs[sc][label].append(r)

def med(recs, key):
    vals = [float(r[key]) for r in recs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else 0.0

def q(s):  # a gnuplot string literal
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'

colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]

def header(sc, nlabels, repeats):
    t = f"{sc}"
    if repeats:
        t += " (median of repeated runs)"
    if title:
        t += " - " + title
    return "\n".join([
        f"set terminal {term} size {width},{height} font 'sans,10'" if term == "pngcairo"
        else f"set terminal png size {width},{height}",
        f"set output {q(os.path.join(out, sc + '.png'))}",
        "set encoding utf8",
        "set datafile separator '\\t'",
        "set style data histograms",
        "set style histogram clustered gap 1",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.9",
        "set key top left horizontal",
        "set grid ytics",
        "set xtics nomirror rotate by -20",
        "set ytics nomirror",
        "set offsets 0, 0, graph 0.15, 0",
        f"set multiplot layout 1,2 title {q(t)}",
    ]) + "\n"

LAT_TICS = ("set ytics (\"1 µs\" 1, \"10 µs\" 10, \"100 µs\" 100, \"1 ms\" 1000, "
            "\"10 ms\" 10000, \"100 ms\" 100000, \"1 s\" 1000000, \"10 s\" 10000000)")
# a value label for latency bars: microseconds below 1 ms, else milliseconds
LAT_LABEL = '($C < 1000 ? sprintf("%.0f µs", $C) : sprintf("%.1f ms", $C / 1000.0))'

def panel(datafile, cols, ylabel, kind, div=1.0, fmt="%.0f"):
    """One clustered bar panel: cols = [(column number, legend, color)]. kind "lin": linear
    axis of values divided by div, printed with fmt; kind "lat": latency in microseconds on
    a log axis."""
    s = [f"set ylabel {q(ylabel)}"]
    if kind == "lat":
        s += ["set logscale y", "set yrange [1:*]", LAT_TICS]
    else:
        s += ["unset logscale y", "set yrange [0:*]", "set ytics autofreq", f"set format y {q(fmt)}"]
    n = len(cols)
    plots = []
    for i, (col, name, color) in enumerate(cols):
        xt = ":xtic(1)" if i == 0 else ""
        v = f"(${col}/{div})" if kind != "lat" else f"{col}"
        plots.append(f"{q(datafile)} using {v}{xt} title {q(name)} lc rgb {q(color)}")
    # value labels above each bar (bar i of n in cluster j sits at j + (i - (n-1)/2)/(n+1))
    for i, (col, name, color) in enumerate(cols):
        off = (i - (n - 1) / 2.0) / (n + 1)
        if kind == "lat":
            y, text = f"(${col})", LAT_LABEL.replace("$C", f"${col}")
        else:
            y, text = f"(${col}/{div})", f"sprintf({q(fmt)}, ${col}/{div})"
        plots.append(f"{q(datafile)} using ($0+({off:.4f})):{y}:({text})"
                     " with labels center offset 0,0.6 font ',8' notitle")
    s.append("plot " + ", \\\n     ".join(plots))
    s.append("unset logscale y")
    return "\n".join(s) + "\n"

for sc in scen_order:
    labels = order[sc]
    repeats = any(len(runs[sc][l]) > 1 for l in labels)
    data = os.path.join(work, sc + ".dat")
    with open(data, "w") as d:
        for l in labels:
            recs = runs[sc][l]
            shown = l
            bad = sorted({r.get("status", "ok") for r in recs} - {"ok"})
            if bad:
                shown += " [" + ",".join(bad) + "]"
            if len(recs) > 1:
                shown += f" (x{len(recs)})"
            row = [shown,
                   med(recs, "publish_rate"), med(recs, "deliver_rate"),
                   med(recs, "lat_p50_us"), med(recs, "lat_p99_us"),
                   med(recs, "ops_rate"), med(recs, "rss_per_conn_bytes"),
                   med(recs, "connect_s"), med(recs, "replay_rate")]
            d.write("\t".join([row[0]] + [f"{v:.3f}" for v in row[1:]]) + "\n")
    g = header(sc, len(labels), repeats)
    lat = [(4, "p50", colors[2]), (5, "p99", colors[3])]
    if sc in ("fanout", "broadcast", "latency"):
        g += panel(data, [(2, "published/s", colors[0]), (3, "delivered/s", colors[1])],
                   "thousand messages per second", "lin", 1000.0)
        g += panel(data, lat, "publish to receipt latency (log scale)", "lat")
    elif sc == "churn":
        g += panel(data, [(6, "subscribes + unsubscribes acknowledged/s", colors[0])],
                   "thousand operations per second", "lin", 1000.0)
        g += panel(data, lat, "request to acknowledgement (log scale)", "lat")
    elif sc == "conns":
        g += panel(data, [(7, "server RSS growth per connection", colors[0])],
                   "bytes per connection", "lin")
        g += panel(data, [(8, "time to connect and subscribe all", colors[1])],
                   "seconds", "lin", 1.0, "%.3g")
    elif sc == "retro":
        g += panel(data, [(2, "published/s", colors[0]), (9, "replayed/s", colors[1])],
                   "thousand messages per second", "lin", 1000.0)
        g += panel(data, lat, "publish to receipt latency (log scale)", "lat")
    else:
        print(f"chart.sh: skipping unknown scenario '{sc}'", file=sys.stderr)
        continue
    g += "unset multiplot\n"
    script = os.path.join(work, sc + ".gp")
    with open(script, "w") as s:
        s.write(g)
    print(sc, script)
PYEOF

while read -r sc script; do
    gnuplot "$script"
    echo "$out/$sc.png"
done <"$work/list"
