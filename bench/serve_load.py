"""How fast is `foundry serve` under a bounded HTTP load, against a bare FastAPI + ONNX Runtime endpoint?

Trains two models into a temporary directory, exports them to ONNX, and measures HTTP servers on 127.0.0.1:

* **overhead**: breast_cancer MLP (``examples/breast_cancer.yaml``, 5 epochs). **floor** is the fair anchor: a
  minimal FastAPI + ONNX Runtime endpoint defined here (``floor_app``): JSON records -> float32 in column order
  (with the fitted standardisation, one numpy expression) -> one ONNX Runtime call -> softmax; no DataFrame, no
  request model, no validation, batching, metrics or access log. **bare** (``bare_app``) is the same app built
  on foundry's exported predictor, which builds a pandas DataFrame per request (kept for comparison with older
  figures). **ours** is ``foundry serve RUN_DIR`` as a user starts it (validation, input warnings, metrics,
  batching with the server's defaults), with one worker and with ``--workers 2``. Targets: ours w1 >= 0.8x
  floor (``ratio_vs_floor_w1``), ours w2 > bare.
* **batching**: a compute-heavy MLP (three 1024-wide layers, 2 epochs) served by ``foundry serve`` with
  batching on vs ``--no-batching``. Targets: >= 3x the requests/s, p99 < 50 ms, 0 errors. Skipped, with a
  message, when this version of ``foundry serve`` has no batching flags.

The load comes from a separate process (``--load``): N asyncio tasks, each holding one raw HTTP/1.1 keep-alive
connection, send the same pre-encoded POST /predict (one breast_cancer record) back to back and read each
response by its Content-Length. An httpx client would saturate its own core near 420 req/s and measure
itself. After a 1 s warm-up the load runs for a fixed duration and stops by itself. requests/s counts 2xx
answers; errors are non-2xx answers and broken connections; latencies (p50, p99) are of 2xx answers.
"CPU us/req" is the CPU time of the server's processes (all workers) per answered request, warm-up included:
the cost that bounds throughput when cores are scarce. On a 2-core machine the load generator and the
server share the cores, so expect noisy numbers. The last line is machine-readable key=value pairs.

Run from the repository root::

    python bench/serve_load.py            # about a minute on a quiet 2-core machine
    python bench/serve_load.py --quick    # a fast smoke run
    python bench/serve_load.py --clients 64 --seconds 10
    python bench/serve_load.py --max-batch-size 32 --max-latency-ms 2   # batching settings for `ours`
"""

import argparse
import asyncio
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: nothing here talks to another machine
BARE_RUN_DIR_ENV = "SERVE_LOAD_RUN_DIR"  # for `python -m uvicorn --factory bench.serve_load:bare_app`
READY_TIMEOUT_S = 120.0
HEAVY_HIDDEN = [1024, 1024, 1024]


# ------------------------------------------------------------------------------------------ the bare server
def bare_app(run_dir: str | Path | None = None):  # noqa: ANN201 - FastAPI app
    """The minimal FastAPI endpoint over the run's ONNX export; POST /predict answers as `foundry serve` does."""
    import pandas as pd
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from modelfoundry.export import load_onnx_predictor
    from modelfoundry.storage import read_json

    # no `from __future__ import annotations` in this file: FastAPI must see `Request` itself, not a string
    run_dir = Path(run_dir or os.environ[BARE_RUN_DIR_ENV])
    predictor = load_onnx_predictor(run_dir / "model" / "onnx")
    name = read_json(run_dir / "model" / "model.json")["name"]
    labels = list(predictor.preprocess["target"].get("classes") or [])
    predictor.predict_frame(pd.DataFrame({c: [0.0] for c in predictor.preprocess["columns"]}))  # warm up
    app = FastAPI()

    @app.get("/")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        output = predictor.predict_frame(pd.DataFrame.from_records((await request.json())["records"]))
        if predictor.task != "classification":
            return JSONResponse({"predictions": output.tolist(), "model": name, "version": "run"})
        return JSONResponse({"predictions": [labels[i] for i in output.argmax(1)], "model": name, "version": "run",
                             "probabilities": output.round(8).tolist()})

    return app


def floor_app(run_dir: str | Path | None = None):  # noqa: ANN201 - FastAPI app
    """The fair floor: the least a hand-written FastAPI + ONNX Runtime endpoint does for this model. POST
    /predict parses the JSON, puts each record's values in column order into one float32 array, applies the
    fitted standardisation (one vectorised numpy expression), makes one ONNX Runtime call, and answers the
    softmax - no DataFrame, no request model, no validation, no batching, no metrics, no access log."""
    import numpy as np
    import onnxruntime as ort
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from modelfoundry.storage import read_json

    run_dir = Path(run_dir or os.environ[BARE_RUN_DIR_ENV])
    onnx_dir = run_dir / "model" / "onnx"
    desc = read_json(onnx_dir / "preprocess.json")
    features = desc["features"]
    if any(f["kind"] != "numeric" or f["scale"]["method"] != "standard" for f in features):
        raise SystemExit("the floor endpoint handles standardised numeric columns only")
    columns = [f["column"] for f in features]
    mean = np.array([f["scale"]["mean"] for f in features])
    scale = np.array([f["scale"]["scale"] for f in features])
    labels = list(desc["target"]["classes"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    name = read_json(run_dir / "model" / "model.json")["name"]
    app = FastAPI()

    @app.get("/")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        records = (await request.json())["records"]
        x = ((np.array([[r[c] for c in columns] for r in records], dtype=np.float64) - mean) / scale)
        logits = session.run(None, {input_name: x.astype(np.float32)})[0]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = z / z.sum(axis=1, keepdims=True)
        return JSONResponse({"predictions": [labels[i] for i in probabilities.argmax(1)], "model": name,
                             "version": "run", "probabilities": probabilities.round(8).tolist()})

    return app


def serve_floor(port: int, run_dir: str) -> None:
    import uvicorn

    uvicorn.run(floor_app(run_dir), host=HOST, port=port, log_level="warning", access_log=False)


def serve_bare(port: int, run_dir: str) -> None:
    import uvicorn

    uvicorn.run(bare_app(run_dir), host=HOST, port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------- the load generator
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 response off the connection: (status, server closes). The body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if length is None:  # both servers send Content-Length; a chunked answer would desynchronise the stream
        raise ConnectionError("response without Content-Length")
    await reader.readexactly(length)
    return status, close


async def client(port: int, request: bytes, measure_from: float, stop_at: float, latencies: list[float],
                 tally: dict[str, int]) -> None:
    """Send `request` back to back on one keep-alive connection (reopened if it breaks) until `stop_at`."""
    writer = None
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(HOST, port)
                start = time.perf_counter()
            writer.write(request)
            status, close = await read_response(reader)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, close = 0, True
            await asyncio.sleep(0.01)  # a refused or broken connection: don't spin
        end = time.perf_counter()
        tally["total"] += status // 100 == 2
        if measure_from <= start and end <= stop_at:
            if status // 100 == 2:
                latencies.append(end - start)
            else:
                tally["errors"] += 1
        if close and writer is not None:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def generate_load(port: int, clients: int, seconds: float, warmup_s: float, body: bytes) -> dict:
    request = (f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    tally = {"total": 0, "errors": 0}
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds
    tasks = [asyncio.ensure_future(client(port, request, measure_from, stop_at, latencies, tally))
             for _ in range(clients)]
    _, late = await asyncio.wait(tasks, timeout=warmup_s + seconds + 10)  # bounded even if the server hangs
    for task in late:
        task.cancel()
    latencies.sort()
    n = len(latencies)

    def percentile_ms(q: float) -> float:
        return latencies[min(n - 1, math.ceil(q * n) - 1)] * 1e3 if n else float("nan")

    return {"requests": n + tally["errors"], "errors": tally["errors"] + len(late), "rps": n / seconds,
            "p50_ms": percentile_ms(0.50), "p99_ms": percentile_ms(0.99), "answered_total": tally["total"]}


def load_main(port: int, clients: int, seconds: float, body_file: str, warmup_s: float) -> None:
    result = asyncio.run(generate_load(port, clients, seconds, warmup_s, Path(body_file).read_bytes()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    print(json.dumps(result))


# ----------------------------------------------------------------------------------- running the servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by process `root` and its descendants (uvicorn's workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += cpu.get(pid, 0.0)
        frontier += [child for child, p in parent.items() if p == pid]
    return total


class Server:
    """A server process started with `command`, ready once GET `ready_path` answers 200; stopped on exit."""

    def __init__(self, command: list[str], port: int, ready_path: str, log_path: Path):
        self.command, self.port, self.ready_path, self.log_path = command, port, ready_path, log_path

    def __enter__(self) -> "Server":
        self.log = open(self.log_path, "w")  # noqa: SIM115 - a file, not a pipe: a full pipe would stall it
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}{self.ready_path}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
        state = f"exited with {self.process.returncode}" if self.process.poll() is not None else "is not ready"
        raise RuntimeError(f"server `{' '.join(self.command)}` {state} after start; its log ends:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn stops its workers on SIGTERM
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and its workers
                self.process.wait()
        self.log.close()


def measure(server: Server, args: argparse.Namespace, body_file: Path) -> dict:
    """Load `server` from a separate process; the load generator's result plus the server's CPU per request."""
    cpu_before = tree_cpu_s(server.process.pid)
    command = [sys.executable, __file__, "--load", HOST, str(server.port), str(args.clients), str(args.seconds),
               str(body_file), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.warmup + args.seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    answered = max(result["answered_total"], 1)
    result["server_us_per_req"] = (tree_cpu_s(server.process.pid) - cpu_before) / answered * 1e6
    result["gen_us_per_req"] = result["cpu_s"] / answered * 1e6
    return result


def ours(run_dir: Path, workers: int, batching_flags: list[str], log_path: Path) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "modelfoundry.cli", "serve", str(run_dir), "--host", HOST, "--port", str(port),
               "--workers", str(workers), *batching_flags]
    return Server(command, port, "/v2/health/ready", log_path)


def floor(run_dir: Path, log_path: Path) -> Server:
    port = free_port()
    return Server([sys.executable, __file__, "--floor-server", str(port), str(run_dir)], port, "/", log_path)


def bare(run_dir: Path, log_path: Path) -> Server:
    port = free_port()
    return Server([sys.executable, __file__, "--bare-server", str(port), str(run_dir)], port, "/", log_path)


def serve_flags() -> set[str]:
    """The options this version of `foundry serve` accepts (the batching flags are newer than the server)."""
    done = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "serve", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=os.environ | {"COLUMNS": "200"}, timeout=60)
    return set(re.findall(r"--[a-z][a-z0-9-]*", done.stdout))


# ------------------------------------------------------------------------------------------- the bench
def train(tmp: Path, name: str, hidden: list[int] | None, epochs: int) -> Path:
    """breast_cancer's example config with `epochs` (and `hidden` layers), trained and exported to ONNX."""
    from modelfoundry.config import load_config
    from modelfoundry.export import export_onnx
    from modelfoundry.api.training import run

    raw = load_config(ROOT / "examples/breast_cancer.yaml").model_dump()
    raw.update(name=name, tracking={"enabled": False})
    raw["training"]["epochs"] = epochs
    if hidden:
        raw["model"]["hidden"] = hidden
    run_dir = tmp / name
    run(load_config(raw), run_dir=run_dir, progress=False)
    export_onnx(run_dir)
    return run_dir


def request_body(tmp: Path) -> Path:
    """One breast_cancer record as a POST /predict body, encoded once."""
    from modelfoundry.data.sources import load_source

    record = load_source("sklearn:breast_cancer").drop(columns="target").iloc[0].to_dict()
    path = tmp / "body.json"
    path.write_bytes(json.dumps({"records": [record]}).encode())
    return path


def uvicorn_stack() -> str:
    """What uvicorn's 'auto' picks here: httptools and uvloop (uvicorn[standard]) are much faster than h11."""
    from importlib.util import find_spec

    return (f"{'httptools' if find_spec('httptools') else 'h11'} + "
            f"{'uvloop' if find_spec('uvloop') else 'asyncio'}")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")
    print(f"  {'server':<22} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU us/req':>10} "
          f"{'gen us/req':>10}")
    for key, r in rows.items():
        print(f"  {key:<22} {r['rps']:7.0f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['errors']:6d} "
              f"{r['server_us_per_req']:10.0f} {r['gen_us_per_req']:10.0f}", flush=True)


def compare_overhead(run_dir: Path, args: argparse.Namespace, body: Path, batching_on: list[str]) -> dict:
    rows = {}
    for key, server in (("floor", floor(run_dir, run_dir.parent / "floor.log")),
                        ("bare", bare(run_dir, run_dir.parent / "bare.log")),
                        ("ours w1", ours(run_dir, 1, batching_on, run_dir.parent / "ours_w1.log")),
                        ("ours w2", ours(run_dir, 2, batching_on, run_dir.parent / "ours_w2.log"))):
        with server:
            rows[key] = measure(server, args, body)
    print_table("overhead: examples/breast_cancer.yaml MLP, POST /predict with one record "
                "(targets: ours w1 >= 0.8x floor, ours w2 > bare)", rows)
    return rows


def compare_batching(run_dir: Path, args: argparse.Namespace, body: Path, batching_on: list[str]) -> dict:
    rows = {}
    for key, extra in (("batching on", batching_on), ("batching off", ["--no-batching"])):
        with ours(run_dir, 1, extra, run_dir.parent / f"{key.replace(' ', '_')}.log") as server:
            rows[key] = measure(server, args, body)
    print_table(f"batching: MLP {HEAVY_HIDDEN}, one worker (targets: on >= 3x off, p99 < 50 ms, 0 errors)", rows)
    return rows


def summary(overhead: dict, batching: dict) -> str:
    """The machine-readable last line."""
    floor_, bare_, w1, w2 = overhead["floor"], overhead["bare"], overhead["ours w1"], overhead["ours w2"]
    pairs = [f"ratio_vs_floor_w1={ratio(w1['rps'], floor_['rps']):.2f}",
             f"overhead_ratio_w1={ratio(w1['rps'], bare_['rps']):.2f}",
             f"overhead_ratio_w2={ratio(w2['rps'], bare_['rps']):.2f}"]
    if batching:
        on, off = batching["batching on"], batching["batching off"]
        pairs += [f"batching_speedup={ratio(on['rps'], off['rps']):.2f}", f"batching_p99_ms={on['p99_ms']:.1f}",
                  f"batching_errors={on['errors']}", f"rps_batching_on={on['rps']:.0f}",
                  f"rps_batching_off={off['rps']:.0f}"]
    pairs += [f"rps_floor={floor_['rps']:.0f}", f"p99_ms_floor={floor_['p99_ms']:.1f}", f"rps_bare={bare_['rps']:.0f}", f"rps_ours_w1={w1['rps']:.0f}", f"rps_ours_w2={w2['rps']:.0f}",
              f"p99_ms_bare={bare_['p99_ms']:.1f}", f"p99_ms_ours_w1={w1['p99_ms']:.1f}",
              f"errors={sum(r['errors'] for r in [*overhead.values(), *batching.values()])}"]
    return " ".join(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds of load first (default 1)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per server, 0.5 s warm-up")
    parser.add_argument("--max-batch-size", type=int, help="passed to `foundry serve` (default: the server's)")
    parser.add_argument("--max-latency-ms", type=float, help="passed to `foundry serve` (default: the server's)")
    parser.add_argument("--load", nargs=5, metavar=("HOST", "PORT", "CLIENTS", "SECONDS", "BODYFILE"),
                        help=argparse.SUPPRESS)  # the load generator's process
    parser.add_argument("--bare-server", nargs=2, metavar=("PORT", "RUN_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--floor-server", nargs=2, metavar=("PORT", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        host, port, clients, seconds, body_file = args.load
        if host != HOST:
            parser.error(f"--load sends to {HOST} only. Got {host} instead.")
        return load_main(int(port), int(clients), float(seconds), body_file, args.warmup)
    if args.floor_server:
        return serve_floor(int(args.floor_server[0]), args.floor_server[1])
    if args.bare_server:
        return serve_bare(int(args.bare_server[0]), args.bare_server[1])
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    if not (args.seconds > 0 and args.clients >= 1):
        parser.error(f"--seconds must be > 0 and --clients >= 1. Got {args.seconds} and {args.clients} instead.")
    has_batching = {"--max-batch-size", "--max-latency-ms", "--no-batching"} <= serve_flags()
    batching_on = [f for opt, value in (("--max-batch-size", args.max_batch_size),
                                        ("--max-latency-ms", args.max_latency_ms)) if value is not None
                   for f in (opt, str(value))]
    if batching_on and not has_batching:
        parser.error("this `foundry serve` has no batching flags; drop --max-batch-size and --max-latency-ms")

    with tempfile.TemporaryDirectory(prefix="foundry-serve-bench-") as tmp_name:
        tmp, started = Path(tmp_name), time.perf_counter()
        small = train(tmp, "breast_cancer", None, epochs=5)
        heavy = train(tmp, "breast_cancer_heavy", HEAVY_HIDDEN, epochs=2) if has_batching else None
        body = request_body(tmp)
        print(f"trained and exported in {time.perf_counter() - started:.0f} s; {args.clients} clients, "
              f"{args.warmup:g} s warm-up + {args.seconds:g} s per server; {os.cpu_count()} CPUs shared by the "
              f"load generator and the server, load average {os.getloadavg()[0]:.1f}; uvicorn on {uvicorn_stack()}",
              flush=True)
        overhead = compare_overhead(small, args, body, batching_on)
        batching = {}
        if heavy is None:
            print("\nbatching: skipped - this `foundry serve` has no --max-batch-size/--max-latency-ms/"
                  "--no-batching flags yet (see `python -m modelfoundry.cli serve --help`)")
        else:
            batching = compare_batching(heavy, args, body, batching_on)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 1:  # the bench itself keeps one to two processes busy
        print(f"\nwarning: load average {load:.1f} on {os.cpu_count()} CPUs: other processes competed for the CPU "
              "and the numbers are noisy (try a quiet machine)")
    print()
    print(summary(overhead, batching))


if __name__ == "__main__":
    main()
