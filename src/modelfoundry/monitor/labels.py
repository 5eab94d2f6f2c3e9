"""Feedback bodies and labels: what POST /feedback accepts (monitor/feedback.py), checked by hand so that every
malformed body is a 422 {"error", "hint"} that says what to send."""

from __future__ import annotations

import json
import math
from typing import Any

from modelfoundry.errors import DataError

MAX_FEEDBACK = 1000  # labels per request
MAX_ID_CHARS = 80
BODY_HINT = ('Send {"id": "<a row id from the prediction\'s \\"ids\\">", "label": <the true label>}, or '
             '{"feedback": [{"id": ..., "label": ...}, ...]} (at most 1000).')


def feedback_items(payload: Any) -> list[tuple[str, Any]]:
    """The (row id, label) pairs of a feedback body; a DataError (422) saying what is wrong otherwise."""
    if not isinstance(payload, dict):
        raise DataError(f"The feedback body must be a JSON object, not {_kind(payload)}.", BODY_HINT)
    if "feedback" in payload:
        extra = sorted(str(k)[:40] for k in payload if k != "feedback")
        items = payload["feedback"]
        if extra:
            raise DataError(f"body: unknown field(s) {', '.join(map(repr, extra[:5]))} beside 'feedback'.", BODY_HINT)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_FEEDBACK:
            what = f"{len(items)} items" if isinstance(items, list) else _kind(items)
            raise DataError(f"feedback: a list of 1 to {MAX_FEEDBACK} items is required, got {what}.", BODY_HINT)
        where = "feedback.{}"
    else:
        items, where = [payload], "body"
    pairs, seen = [], set()
    for i, item in enumerate(items):
        place = where.format(i)
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            got = f"the fields {', '.join(sorted(repr(str(k)[:40]) for k in item)[:5]) or 'none'}" \
                if isinstance(item, dict) else _kind(item)
            raise DataError(f"{place}: an object with exactly 'id' and 'label' is required, got {got}.", BODY_HINT)
        rid = item["id"]
        if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID_CHARS:
            raise DataError(f"{place}.id: a row id (a string of 1 to {MAX_ID_CHARS} characters) is required, got "
                            f"{_kind(rid) if not isinstance(rid, str) else f'{len(rid)} characters'}.", BODY_HINT)
        if rid in seen:
            raise DataError(f"{place}.id: '{rid}' appears twice in the feedback.", "Send one label per row id.")
        seen.add(rid)
        pairs.append((rid, item["label"]))
    return pairs


def classes(backend: Any) -> tuple[str, list[Any] | None]:
    """(task, the labels feedback must be one of): a classifier's class labels, an anomaly detector's false / true
    (what it answers), None for regression (a number)."""
    if backend.task == "classification":
        return backend.task, list(backend.labels)
    return backend.task, [False, True] if backend.task == "anomaly" else None


def check_label(label: Any, task: str, labels: list[Any] | None, where: str) -> None:
    """A DataError (422) unless `label` is one of `labels` with their JSON type (classification: the class labels;
    anomaly: false / true), or a finite number (regression: `labels` None)."""
    if labels is not None:
        if not any(same_label(label, known) for known in labels):
            shown = ", ".join(_json(v) for v in labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise DataError(f"{where}: {_json(label)[:60]} is not one of the model's labels: {shown}.",
                            "Send one of these labels with the same JSON type (e.g. 1, not \"1\").")
        return
    finite = isinstance(label, (int, float)) and not isinstance(label, bool)
    try:
        finite = finite and math.isfinite(float(label))
    except OverflowError:
        finite = False
    if not finite:
        raise DataError(f"{where}: a finite number is required for a regression model, got {_json(label)[:60]}.",
                        "Send the true value as a JSON number.")


def same_label(a: Any, b: Any) -> bool:
    """Equal values of the same JSON type (True is not 1, "1" is not 1; 1 and 1.0 are both numbers)."""
    number = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, number) and isinstance(b, number):
        return a == b
    return type(a) is type(b) and a == b


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
