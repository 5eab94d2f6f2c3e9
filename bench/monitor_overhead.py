"""What does in-server monitoring cost? Served requests/s with monitoring on vs off, interleaved in one run.

Trains the breast_cancer MLP (``examples/breast_cancer.yaml``, 5 epochs: 30 numeric columns, a saved reference
profile) into a temporary directory, exports it to ONNX, and starts three one-worker servers on 127.0.0.1, each
as ``foundry serve`` runs it (``api.serving.start_server``, the server's default settings):

* **off**: no extensions (``foundry serve --no-monitor``);
* **drift**: the drift and OOD monitor alone (``monitor.server.DriftMonitor``);
* **on**: the extensions ``foundry serve`` adds by default (drift + the request log, in a temporary SQLite file).

Monitoring runs with the model's monitor: section (windows of 500 rows by default; ``--window`` sets smaller ones,
e.g. 100, for a harsher test; the request log logs ``monitor.log.sample`` of the requests, 0.1 by default,
``--sample`` sets another share): many windows close and are tested during each measurement, so the statistics'
cost is in the figures, not just the per-batch bookkeeping (the last line says how many were tested). The load is
bench/serve_load.py's (a separate process of N asyncio clients on raw keep-alive connections sending one
pre-encoded POST /predict record back to back); the servers are measured in turn, the order rotated every round,
so that drift in the machine's speed falls on all three alike. Targets: on/off >= 0.95, drift/off >= 0.95.

Run from the repository root, on a quiet machine (the load generator and the server share the cores)::

    OMP_NUM_THREADS=1 python bench/monitor_overhead.py             # ~1.5 min: 5 rounds of 5 s per server
    OMP_NUM_THREADS=1 python bench/monitor_overhead.py --quick     # a smoke run
    OMP_NUM_THREADS=1 python bench/monitor_overhead.py --modes off,log,drift,on --sample 1.0   # log every request
    OMP_NUM_THREADS=1 python bench/monitor_overhead.py --modes off,noop,ids,log,drift   # where the cost is:
        # noop: the extension machinery alone (an extension that does nothing); ids: and request ids;
        # log: the request log alone (drift left out of `foundry serve`'s default extensions)

Measured (2-core machine, load average 0.6-1.1, 5 rounds each, ``--modes off,log,drift,on``), req/s over off's:

    monitor.log.sample    log          drift        on (log + drift)   p99 ms on (off ~9)
    1.0, before *         0.887        0.973        0.773              19.5
    1.0                   0.886-0.946  0.946-0.989  0.821-0.842        16.9-17.5
    0.5                   0.938-0.969  0.969-0.976  0.905-0.918        13.4-14.2
    0.25                  0.960        0.974        0.922              11.6
    0.1 (the default)     0.988-0.996  0.982-0.987  0.953-0.963        10.4-11.2
    * the log encoded each batch in the extensions' thread: a thread hop per batch, a dict and JSON per row

Per logged row the server spends ~35 us of CPU (log at 1.0 vs 0.1: +51-66 vs +20 us per request): the row's id
(uuid4, on the event loop), encoding and the OOD score in the log's writer thread (~5 us), the SQLite insert (~4 us
into an empty table, ~17 us once the unique index on the random ids holds 100,000 rows) and the writer's share of
the GIL. Runs differ by a few hundredths: compare servers within one run.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (HOST, ROOT, Server, free_port, measure, print_table, ratio,  # noqa: E402 - after the path
                        request_body, train, uvicorn_stack)

MODES = ("off", "drift", "on")


# --------------------------------------------------------------------------------------- a server process
class NoOp:
    """A server extension that does nothing with the batches it is given (--modes noop, ids)."""

    def __init__(self, id_share: float = 0.0):
        self.id_share = id_share

    def on_batch(self, batch) -> None:  # noqa: ANN001 - a BatchRecord
        pass


def extensions_for(mode: str, run_dir: Path, window_rows: int, log_url: str, sample: float | None = None) -> tuple:
    """The server extensions of `mode`, configured from the run's monitor: section with `window_rows` windows (and
    monitor.log.sample `sample`; None: the run's)."""
    from modelfoundry.rundir import load_run_config

    config = load_run_config(run_dir)
    window = config.monitor.window.model_copy(update={"rows": window_rows or config.monitor.window.rows})
    logged = {"url": log_url} | ({"sample": sample} if sample is not None else {})
    monitor = config.monitor.model_copy(update={"window": window, "log": config.monitor.log.model_copy(update=logged)})
    if mode == "off":
        return ()
    if mode == "noop":  # the extension machinery alone: every batch delivered to an extension that does nothing
        return (NoOp(),)
    if mode == "ids":  # ... and every request given an id (as the request log asks), answered in "ids"
        return (NoOp(id_share=1.0),)
    if mode == "drift":
        from modelfoundry.monitor.server import DriftMonitor

        return (DriftMonitor(monitor),)
    from modelfoundry.api.serving import monitor_extensions
    from modelfoundry.monitor.server import DriftMonitor

    extensions = monitor_extensions(monitor)  # what `foundry serve` adds by default
    return tuple(e for e in extensions if mode == "on" or not isinstance(e, DriftMonitor))  # "log": without drift


def serve_mode(port: int, run_dir: str, mode: str, window_rows: int, log_url: str, sample: float | None) -> None:
    """Run one server until stopped: `foundry serve RUN_DIR` with the extensions of `mode`."""
    from modelfoundry.api.serving import prepare_server, start_server

    plan = prepare_server(run_dir, {"host": HOST, "port": port, "workers": 1, "access_log": False}, monitor=False)
    start_server(plan, extensions_for(mode, Path(run_dir), window_rows, log_url, sample))  # monitor=False: only these


def server(mode: str, run_dir: Path, args: argparse.Namespace, tmp: Path) -> Server:
    port = free_port()
    command = [sys.executable, __file__, "--server", str(port), str(run_dir), mode, str(args.window),
               f"sqlite:///{tmp / f'requests-{mode}.db'}", str(args.sample if args.sample is not None else "")]
    return Server(command, port, "/v2/health/ready", tmp / f"{mode}.log")


# ----------------------------------------------------------------------------------------------- the bench
def run_rounds(servers: dict, args: argparse.Namespace, body: Path) -> dict[str, list[dict]]:
    """`args.rounds` measurements of every server, the order rotated each round."""
    results: dict[str, list[dict]] = {mode: [] for mode in servers}
    for r in range(args.rounds):
        order = list(servers)[r % len(servers):] + list(servers)[:r % len(servers)]
        for mode in order:
            results[mode].append(measure(servers[mode], args, body))
        print(f"  round {r + 1}: " + "  ".join(f"{m} {results[m][-1]['rps']:.0f} req/s" for m in servers), flush=True)
    return results


def median_row(rows: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "server_us_per_req", "gen_us_per_req")
    return {**{k: statistics.median(r[k] for r in rows) for k in keys}, "errors": sum(r["errors"] for r in rows)}


def windows_tested(server: Server) -> str:
    """The monitor endpoint's count of tested windows (proof that the statistics ran during the load)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{HOST}:{server.port}/v2/models/breast_cancer/monitor", timeout=5) as r:
            return str(json.load(r).get("windows_tested"))
    except OSError as exc:
        return f"unreadable ({exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each server, interleaved (default 5)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per measurement (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds of load first (default 1)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--window", type=int, default=0,
                        help="monitor.window.rows of the servers (default: the model's, 500)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="servers to compare (default off,drift,on; also noop, ids, log)")
    parser.add_argument("--sample", type=float, default=None,
                        help="monitor.log.sample of the log and on servers (default: the model's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 2 s, 0.5 s warm-up")
    parser.add_argument("--server", nargs=6, metavar=("PORT", "RUN_DIR", "MODE", "WINDOW", "LOG_URL", "SAMPLE"),
                        help=argparse.SUPPRESS)  # one server's process
    args = parser.parse_args()
    if args.server:
        port, run_dir, mode, window, log_url, sample = args.server
        return serve_mode(int(port), run_dir, mode, int(window), log_url, float(sample) if sample else None)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 2, 2.0, 0.5
    if not (args.rounds >= 1 and args.seconds > 0 and args.clients >= 1 and (args.window >= 20 or not args.window)):
        parser.error("--rounds and --clients must be >= 1, --seconds > 0 and --window >= 20. Got "
                     f"{args.rounds}, {args.clients}, {args.seconds} and {args.window} instead.")
    with tempfile.TemporaryDirectory(prefix="foundry-monitor-bench-") as tmp_name:
        tmp, started = Path(tmp_name), time.perf_counter()
        run_dir = train(tmp, "breast_cancer", None, epochs=5)
        body = request_body(tmp)
        from modelfoundry.rundir import load_run_config

        monitor = load_run_config(run_dir).monitor
        window, sample = args.window or monitor.window.rows, args.sample if args.sample is not None else monitor.log.sample
        print(f"trained and exported in {time.perf_counter() - started:.0f} s; {args.rounds} rounds of {args.clients} "
              f"clients, {args.warmup:g} s warm-up + {args.seconds:g} s per server; windows of {window} rows; "
              f"request log sample {sample:g}; "
              f"{os.cpu_count()} CPUs shared by the load generator and the servers, load average "
              f"{os.getloadavg()[0]:.1f}; uvicorn on {uvicorn_stack()}", flush=True)
        servers = {mode: server(mode, run_dir, args, tmp) for mode in args.modes.split(",")}
        for s in servers.values():
            s.__enter__()
        try:
            results = run_rounds(servers, args, body)
            tested = {mode: windows_tested(servers[mode]) for mode in servers if mode in ("drift", "on")}
        finally:
            for s in servers.values():
                s.__exit__()
    rows = {mode: median_row(results[mode]) for mode in results}
    print_table(f"monitoring: breast_cancer MLP, POST /predict with one record, medians of {args.rounds} rounds "
                "(targets: on/off >= 0.95, drift/off >= 0.95)", rows)
    print("  windows tested during the load: " + ", ".join(f"{m} {n}" for m, n in tested.items()))
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 1:
        print(f"\nwarning: load average {load:.1f} on {os.cpu_count()} CPUs: the numbers are noisy")
    print()
    print(summary(rows, tested))


def summary(rows: dict[str, dict], tested: dict[str, str]) -> str:
    """The machine-readable last line: each monitored server's req/s over off's, then the figures."""
    off = rows.get("off")
    names = {"on": "monitor_on_vs_off", "drift": "drift_vs_off", "log": "log_vs_off", "noop": "noop_vs_off",
             "ids": "ids_vs_off"}
    pairs = [f"{names[m]}={ratio(rows[m]['rps'], off['rps']):.3f}" for m in names if m in rows and off]
    pairs += [f"rps_{m}={r['rps']:.0f}" for m, r in rows.items()]
    pairs += [f"cpu_us_per_req_{m}={r['server_us_per_req']:.0f}" for m, r in rows.items()]
    pairs += [f"p99_ms_{m}={r['p99_ms']:.1f}" for m, r in rows.items()]
    pairs += [f"windows_tested_{m}={n}" for m, n in tested.items()]
    pairs.append(f"errors={sum(r['errors'] for r in rows.values())}")
    return " ".join(pairs)

if __name__ == "__main__":
    main()
