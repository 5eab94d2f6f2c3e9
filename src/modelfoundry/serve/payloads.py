"""Request bodies: JSON read and checked by hand, so every malformed body is a 4xx {"error", "hint"}.

The schemas are pydantic models (they also document the routes in /openapi.json); /predict is checked by a
few isinstance tests instead of a pydantic copy of every record, because it is the hot path.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelfoundry.data.input_schema import InputSchema
from modelfoundry.errors import DataError, UnsupportedMediaType, first_line

OIP_NUMERIC = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
OIP_TYPES = (*OIP_NUMERIC, "BOOL", "BYTES")
PREDICT_FIELDS = ("records", "ood")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(min_length=1)
    ood: bool = False  # also answer the per-row scores of the server's monitor (e.g. out-of-distribution)


class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


def parse_json(body: bytes, content_type: str | None) -> Any:
    """The JSON document of a request body (a missing content type is read as JSON)."""
    if content_type is not None:
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaType(f"The request body is '{media}', not JSON.",
                                       "Send the body as JSON with the header 'Content-Type: application/json'.")
    try:
        return json.loads(body)
    except RecursionError:
        raise DataError("The request body is not usable JSON: it is nested too deeply.",
                        "Send a flat JSON object, as docs/serving.md shows.") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4,300 digits
        raise DataError(f"The request body is not valid JSON ({first_line(exc)}).",
                        "Send a JSON object, as docs/serving.md shows.") from None


def predict_records(payload: Any, max_records: int) -> list[dict[str, Any]]:
    """The records of a /predict body {"records": [{column: value, ...}, ...]}."""
    hint = 'Send {"records": [{"column": value, ...}, ...]}.'
    if not isinstance(payload, dict):
        raise DataError(f"The request body must be a JSON object with 'records', not a {_json_type(payload)}.", hint)
    extra = [str(k) for k in payload if k not in PREDICT_FIELDS]
    if extra:
        raise DataError(f"body: unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}; the body holds only "
                        "'records' (and 'ood').", hint)
    records = payload.get("records")
    if not isinstance(records, list) or not records:
        what = "missing" if records is None else ("an empty list" if records == [] else f"a {_json_type(records)}")
        raise DataError(f"records: a non-empty list of records is required, got {what}.", hint)
    if len(records) > max_records:
        raise too_many(len(records), max_records)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"records.{i}: each record must be an object {{column: value}}, not a "
                            f"{_json_type(record)}.", hint)
    return records


def asks_scores(options: dict[str, Any] | None, where: str) -> bool:
    """Whether a request asks for the per-row scores: /predict's {"ood": true}, OIP's parameters {"ood": true}."""
    value = (options or {}).get("ood", False)
    if not isinstance(value, bool):
        raise DataError(f"{where}: 'ood' must be true or false, not a {_json_type(value)}.",
                        'Send "ood": true to get each row\'s out-of-distribution score.')
    return value


def infer_request(payload: Any) -> InferRequest:
    try:
        return InferRequest.model_validate(payload)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise DataError("; ".join(problems[:10]), "Send an Open Inference Protocol v2 request: "
                        '{"inputs": [{"name", "shape": [N], "datatype", "data": [...]}, ...]}.') from None


def infer_columns(inputs: list[InferInput], schema: InputSchema, max_records: int) -> tuple[dict[str, list], int]:
    """OIP v2 inputs, one per raw column (shape [N] or [N, 1]), as {column: values}; errors name the input.

    A numeric column takes any numeric datatype (metadata declares FP64), a categorical or text one BYTES."""
    columns: dict[str, list[Any]] = {}
    rows = None
    for tensor in inputs:
        kind, name = schema.kinds.get(tensor.name), _short(tensor.name)
        textual = kind in ("categorical", "text")
        expected = "BYTES" if textual else "FP64"
        if tensor.datatype not in OIP_TYPES:
            raise DataError(f"Input '{name}' has datatype '{_short(tensor.datatype)}'; expected {expected}.",
                            "Use the datatypes of GET /v2/models/{name}: FP64 for numbers, BYTES for text.")
        if kind is not None and (tensor.datatype in OIP_NUMERIC) == textual:
            raise DataError(f"Input '{name}' has datatype '{tensor.datatype}'; this model expects "
                            f"{expected} for it ({kind} column).",
                            "Use the datatypes of GET /v2/models/{name}: FP64 for numbers, BYTES for text.")
        n = tensor.shape[0] if tensor.shape else -1
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) \
                or len(tensor.data) != n:
            raise DataError(f"Input '{name}' has shape {_short(tensor.shape)} and {len(tensor.data)} values; each "
                            "input is one column, shape [N] or [N, 1] with N values.", "Send one tensor per column.")
        if rows is not None and n != rows:
            raise DataError(f"Input '{name}' has {n} rows but an earlier input has {rows}.",
                            "Send the same number of rows for every column.")
        if tensor.name in columns:
            raise DataError(f"Input '{name}' appears twice.", "Send one tensor per column.")
        rows = n
        columns[tensor.name] = tensor.data
    if not rows:
        raise DataError("The request holds no rows (every input has shape [0]).", "Send at least one row.")
    if rows > max_records:
        raise too_many(rows, max_records)
    return columns, rows


def too_many(n: int, limit: int) -> DataError:
    return DataError(f"The request holds {n} rows; this server takes at most {limit} per request.",
                     "Split the request into smaller batches.")


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI requestBody for routes that read their body by hand ($defs inlined)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _short(value: Any, limit: int = 60) -> str:
    """A client's value in a message, cut to `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
