"""Converting run directories of modelfoundry 0.1, which stored fitted preprocessing as a pickle.

A pickle can run any code when loaded, so nothing else in modelfoundry ever unpickles. `foundry migrate
RUN_DIR` reads preprocess.pkl with an unpickler that can only build the handful of classes 0.1 wrote
(our Preprocessor and TargetEncoder, the scikit-learn imputers, scalers, encoders and pipelines, numpy
arrays); any other global - `os.system`, `builtins.eval`, anything not on the list - stops it with an
error naming that global, before anything is built. It then writes the portable preprocess.json that
every loader reads and moves the pickle aside (preprocess.pkl.migrated).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

from modelfoundry.errors import RunDirError, first_line

# (module, name) pairs a 0.1 preprocess.pkl may reference; modules are matched exactly
ALLOWED_GLOBALS = {
    ("modelfoundry.data.transform", "Preprocessor"), ("modelfoundry.data.transform", "TargetEncoder"),
    ("modelfoundry.data.clean", "FeatureSpec"), ("modelfoundry.data.clean", "OutlierClipper"),
    ("sklearn.compose._column_transformer", "ColumnTransformer"),
    ("sklearn.compose._column_transformer", "_RemainderColsList"),
    ("sklearn.pipeline", "Pipeline"), ("sklearn.impute._base", "SimpleImputer"),
    ("sklearn.preprocessing._data", "StandardScaler"), ("sklearn.preprocessing._data", "MinMaxScaler"),
    ("sklearn.preprocessing._encoders", "OneHotEncoder"), ("sklearn.preprocessing._encoders", "OrdinalEncoder"),
    ("sklearn.utils._bunch", "Bunch"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.dtypes", "Float64DType"), ("numpy.dtypes", "Int64DType"), ("numpy.dtypes", "ObjectDType"),
    ("numpy.dtypes", "Float32DType"), ("numpy.dtypes", "Int32DType"), ("numpy.dtypes", "BoolDType"),
    ("numpy.dtypes", "StrDType"),
    ("builtins", "slice"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}
MAX_PICKLE_BYTES = 256 * 1024 * 1024


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a modelfoundry 0.1 "
                                         "preprocessing file never holds")
        return super().find_class(module, name)


def read_legacy_preprocessing(path: Path) -> dict[str, Any]:
    """The {"format", "preprocessor", "target_encoder"} dict of a 0.1 preprocess.pkl, built from allowed
    classes only."""
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise RunDirError(f"'{path}' is larger than a preprocessing file can be ({path.stat().st_size} bytes).",
                          "It was not made by modelfoundry; retrain the model.")
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001 - refused globals, truncated files, foreign formats
        raise RunDirError(f"'{path}' was not converted: {first_line(exc)}. Nothing in it was run.",
                          "Retrain the model with this version of modelfoundry (`foundry run CONFIG`).") from None
    if not isinstance(loaded, dict) or not {"preprocessor", "target_encoder"} <= set(loaded):
        raise RunDirError(f"'{path}' does not hold modelfoundry 0.1 preprocessing.", "Retrain the model.")
    return loaded


def migrate_run_dir(run_dir: str | Path) -> Path:
    """Write run_dir/preprocess.json from a 0.1 preprocess.pkl (read without executing it); returns its path."""
    import json

    from modelfoundry.data.portable import describe_preprocessor
    from modelfoundry.data.transform import Preprocessor, TargetEncoder
    from modelfoundry.artifacts.rundir import RunDir
    from modelfoundry.rundir import LEGACY_PREPROCESS, PREPROCESS, read_record
    from modelfoundry.storage import write_bytes_atomic

    run_dir = Path(run_dir)
    legacy, target = RunDir(run_dir).legacy_preprocess, RunDir(run_dir).preprocess
    if target.is_file():
        raise RunDirError(f"'{run_dir}' already has {PREPROCESS}; there is nothing to migrate.",
                          f"Use it as it is: `foundry evaluate {run_dir}`.")
    if not legacy.is_file():
        raise RunDirError(f"'{run_dir}' has no {LEGACY_PREPROCESS} to migrate.",
                          "Pass a run directory made by modelfoundry 0.1.")
    loaded = read_legacy_preprocessing(legacy)
    pre, encoder = loaded["preprocessor"], loaded["target_encoder"]
    if not isinstance(pre, Preprocessor) or not isinstance(encoder, TargetEncoder):
        raise RunDirError(f"'{legacy}' does not hold modelfoundry 0.1 preprocessing.", "Retrain the model.")
    if not hasattr(pre, "groups_") and hasattr(pre, "column_transformer_"):  # 0.1: one step per column
        pre.groups_ = [[spec] for spec in pre.specs]
        pre.step_names_ = [spec.name for spec in pre.specs]
        pre.ranges_ = {}  # 0.1 did not record training ranges: no out-of-range warnings for this model
    spec_path = RunDir(run_dir).model_record
    column = read_record(spec_path, run_dir).get("target") if spec_path.is_file() else None
    desc = describe_preprocessor(pre, encoder, column)
    write_bytes_atomic(target, (json.dumps(desc, indent=1) + "\n").encode(), durable=True)
    os.replace(legacy, legacy.with_name(LEGACY_PREPROCESS + ".migrated"))
    return target
