"""Read tabular data: CSV / TSV / Parquet / JSONL files, and real datasets bundled with scikit-learn."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelfoundry.errors import DataError, first_line, unknown_name

if TYPE_CHECKING:
    import pandas as pd

BUNDLED = {
    "digits": "load_digits",  # 1797 x 64 pixels (8x8 images), 10 classes
    "breast_cancer": "load_breast_cancer",  # 569 x 30, binary
    "wine": "load_wine",  # 178 x 13, 3 classes
    "iris": "load_iris",  # 150 x 4, 3 classes
    "diabetes": "load_diabetes",  # 442 x 10, regression
}
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def describe_source(source: str) -> str:
    """The source as recorded in a run: bundled names as given, paths made absolute."""
    return source if source.startswith("sklearn:") else str(Path(source).expanduser().resolve())


def load_source(source: str) -> pd.DataFrame:
    """Load `source` (``sklearn:<name>`` or a file path) into a DataFrame, with errors naming the file."""
    if source.startswith("sklearn:"):
        return _load_bundled(source.removeprefix("sklearn:"))
    return read_table(Path(source).expanduser())


def read_table(path: Path) -> pd.DataFrame:
    """Read one data file, choosing the reader by its suffix."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"Data file '{path}' does not exist (looked in {path.resolve().parent}).",
                        "Fix data.source in the config; relative paths are taken from the current directory.")
    if path.is_dir():
        raise DataError(f"Data file '{path}' is a directory, not a file.",
                        f"Point at one file inside it ({', '.join(sorted(SUFFIXES))}).")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"Data file '{path}' has suffix '{path.suffix}', which modelfoundry cannot read.",
                        f"Use one of {', '.join(sorted(SUFFIXES))}, or a bundled dataset such as sklearn:iris.")
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",")
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=(fmt == "jsonl"))
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        if isinstance(exc, pd.errors.EmptyDataError):
            raise DataError(f"Data file '{path}' is empty.", "Point data.source at a file with a header "
                            "row and data rows.") from None
        first = first_line(exc)
        raise DataError(f"Could not read '{path}' as {fmt}: {first}.",
                        "Check that the file is complete and really is in that format.") from None
    if frame.empty:
        raise DataError(f"Data file '{path}' has no rows.", "Point data.source at a file with data rows.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _load_bundled(name: str) -> pd.DataFrame:
    if name not in BUNDLED:
        raise DataError(unknown_name("bundled dataset", f"sklearn:{name}", [f"sklearn:{n}" for n in BUNDLED]),
                        "Or point data.source at a .csv, .parquet or .jsonl file.")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, BUNDLED[name])(as_frame=True)
    # scikit-learn's own column names and integer target, so the same columns work for predict/serve
    return bunch.frame.copy()
