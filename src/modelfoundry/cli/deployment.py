"""Commands that ship a model: export (ONNX), serve (HTTP), keys (API keys for the server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import RunDirArg, UriOption
from modelfoundry.cli.render import say_tracking


@friendly_errors
def export_model(model: RunDirArg,
                 fmt: Annotated[str, typer.Option("--format", help="Export format.")] = "onnx",
                 output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output directory "
                                                                "(default: RUN_DIR/model/onnx).")] = None,
                 tolerance: Annotated[float, typer.Option("--tolerance", help="Largest allowed difference between "
                                                          "PyTorch and ONNX Runtime outputs.")] = 1e-4,
                 merge: Annotated[bool, typer.Option("--merge", help="Instead of ONNX: a standalone merged model "
                                                     "(LoRA folded into a plain Hugging Face encoder plus its head, "
                                                     "or into a causal LM; default RUN_DIR/model/merged), checked "
                                                     "against the adapter model within --tolerance.")] = False) -> None:
    """Export to ONNX (dynamic batch) with its preprocessing sidecar, checked for parity on held-out rows."""
    from modelfoundry.api.exporting import export

    if not model.exists():  # a registered version: the export is recorded on it
        say_tracking()
    result = export(str(model), output, fmt=fmt, tolerance=tolerance, merge=merge)
    if merge:
        open_console().print(f"Merged model written to [bold]{result.out_dir}[/] (load it with "
                             f"{result.loads_with}): max |merged - adapters| = "
                             f"{result.max_abs_diff:.2e} on {result.rows_checked} {result.checked_on}.")
        return
    open_console().print(f"Exported to [bold]{result.out_dir}[/] ({result.exporter} exporter, opset {result.opset}): "
                     f"max |torch - onnxruntime| = {result.max_abs_diff:.2e} on {result.rows_checked} held-out rows.")


@friendly_errors
def serve(model: RunDirArg,
          host: Annotated[Optional[str], typer.Option("--host", help="Interface to bind [serve.host].")] = None,
          port: Annotated[Optional[int], typer.Option("--port", help="TCP port [serve.port].")] = None,
          workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Server processes "
                                                         "[serve.workers].")] = None,
          backend: Annotated[Optional[str], typer.Option("--backend", help="onnx (ONNX Runtime) or torch "
                                                         "[serve.backend].")] = None,
          batching: Annotated[Optional[bool], typer.Option("--batching/--no-batching", help="Coalesce concurrent "
                                                           "requests into one model call "
                                                           "[serve.batching].", show_default=False)] = None,
          max_batch_size: Annotated[Optional[int], typer.Option("--max-batch-size", min=1, help="Rows per model "
                                                                "call [serve.max_batch_size].")] = None,
          max_latency_ms: Annotated[Optional[float], typer.Option(
              "--max-latency-ms", min=0, help="How long a batch waits for more requests "
              "[serve.max_latency_ms].")] = None,
          max_queue_size: Annotated[Optional[int], typer.Option("--max-queue-size", min=1, help="Waiting requests "
                                                                "before 503 [serve.max_queue_size].")] = None,
          queue_timeout_ms: Annotated[Optional[float], typer.Option(
              "--queue-timeout-ms", min=1, help="Longest wait in the queue before 503 "
              "[serve.queue_timeout_ms].")] = None,
          max_records: Annotated[Optional[int], typer.Option("--max-records", min=1, help="Rows per request "
                                                             "[serve.max_records].")] = None,
          poll_s: Annotated[Optional[float], typer.Option("--poll-s", min=0, help="Seconds between checks of the "
                                                          "alias (hot switch); 0 disables [serve.poll_s].")] = None,
          api_keys_file: Annotated[Optional[Path], typer.Option(
              "--api-keys-file", help="Require an API key (file from `foundry keys create`) "
              "[serve.api_keys_file].")] = None,
          max_body_mb: Annotated[Optional[float], typer.Option("--max-body-mb", min=0.001, help="Largest request "
                                                               "body [serve.max_body_mb].")] = None,
          rate_limit: Annotated[Optional[float], typer.Option(
              "--rate-limit", min=0.001, help="Requests per second per API key (per client without keys) "
              "[serve.rate_limit_per_s].")] = None,
          rate_burst: Annotated[Optional[int], typer.Option("--rate-burst", min=1, help="Requests allowed at once "
                                                            "above the rate [serve.rate_burst].")] = None,
          on_unseen: Annotated[Optional[str], typer.Option(
              "--on-unseen", help="An unseen category: warn (predict, with a warning) or reject (422) "
              "[serve.on_unseen].")] = None,
          openapi: Annotated[Optional[bool], typer.Option("--openapi/--no-openapi", help="Serve /openapi.json "
                                                          "[serve.openapi].", show_default=False)] = None,
          access_log: Annotated[Optional[bool], typer.Option("--access-log/--no-access-log", help="Log every "
                                                             "request (costs ~5% of throughput) [serve.access_log].",
                                                             show_default=False)] = None,
          max_streams: Annotated[Optional[int], typer.Option(
              "--max-streams", min=1, help="Language models: generations decoded together "
              "[serve.max_streams].")] = None,
          max_new_tokens: Annotated[Optional[int], typer.Option(
              "--max-new-tokens", min=1, help="Language models: most tokens per request "
              "[serve.max_new_tokens].")] = None,
          dtype: Annotated[Optional[str], typer.Option("--dtype", help="Language models: float32 or bfloat16 "
                                                       "weights [serve.llm_dtype].")] = None,
          monitor: Annotated[Optional[bool], typer.Option(
              "--monitor/--no-monitor", help="Request log, POST /feedback, drift and out-of-distribution "
              "monitoring [monitor.enabled].", show_default=False)] = None,
          shadow: Annotated[Optional[str], typer.Option(
              "--shadow", metavar="REF", help="Run a challenger (NAME@ALIAS, NAME/VERSION or a run directory) on a "
              "copy of the traffic: logged and measured, never returned [monitor.shadow].")] = None,
          uri: UriOption = None) -> None:
    """Serve a model over HTTP: Open Inference Protocol v2 and POST /predict; a language model (a causal-LM run,
    or a base: smollm2-135m or a Hugging Face directory) over the OpenAI API (/v1/completions,
    /v1/chat/completions).

    Settings come from the model's own config (its serve: and monitor: sections, defaults in docs/config.md);
    each option given overrides the key in brackets. With monitoring (the default) every row is watched for drift and
    out-of-distribution values (GET /v2/models/NAME/monitor, /metrics); a sample of requests (monitor.log.sample,
    10%) is logged (foundry-requests.db beside foundry.db) and answered with row ids ("ids"), which POST /feedback
    takes with true labels for the live accuracy."""
    from modelfoundry.api.serving import prepare_server, start_server

    given = {"host": host, "port": port, "workers": workers, "backend": backend, "batching": batching,
             "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms, "max_queue_size": max_queue_size,
             "queue_timeout_ms": queue_timeout_ms, "max_records": max_records, "poll_s": poll_s,
             "api_keys_file": str(api_keys_file) if api_keys_file else None, "max_body_mb": max_body_mb,
             "rate_limit_per_s": rate_limit, "rate_burst": rate_burst, "on_unseen": on_unseen, "openapi": openapi,
             "access_log": access_log, "max_streams": max_streams, "max_new_tokens": max_new_tokens,
             "llm_dtype": dtype}
    plan = prepare_server(str(model), {k: v for k, v in given.items() if v is not None}, uri, monitor=monitor,
                          shadow=shadow)
    if plan.memory is not None:  # a language model: what its weights and streams' KV caches take
        open_console().print(plan.memory.summary(), markup=False)
    start_server(plan)


keys_app = typer.Typer(help="API keys for `foundry serve --api-keys-file`.", no_args_is_help=True,
                       rich_markup_mode=None)


@keys_app.command("create")
@friendly_errors
def keys_create(name: Annotated[str, typer.Argument(help="Who the key is for (letters, digits, _ . -).")],
                file: Annotated[Path, typer.Option("--file", help="Keys file (created if missing; only hashes "
                                                   "are stored).")] = Path("api-keys.txt")) -> None:
    """Create an API key; it is printed once, and only its hash is stored."""
    from modelfoundry.serve.security import create_key

    key = create_key(file, name)
    open_console().print(f"API key for [bold]{name}[/] (shown once; send as 'Authorization: Bearer KEY'):")
    typer.echo(key)
