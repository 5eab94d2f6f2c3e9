"""The run directory, the unit of reproducibility: its layout, atomic writes, and the saved model.

    runs/<name>-<timestamp>/
      config.yaml  data.json  manifest.json  preprocess.pkl  metrics.jsonl
      checkpoints/{last,best}.pt   eval/   model/{weights.pt,model.json}
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfoundry.config import Config, dump_config, load_config
from modelfoundry.errors import RunDirError
from modelfoundry.storage import read_json, write_bytes_atomic, write_json, write_text

FORMAT_VERSION = 1


def create_run_dir(config: Config, run_dir: str | Path | None = None) -> Path:
    """`run_dir` if given (created if needed), else a fresh `<output.dir>/<name>-<timestamp>/`."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root = Path(config.output.dir) / f"{config.name}-{stamp}"
        suffix = 1
        while root.exists():
            suffix += 1
            root = Path(config.output.dir) / f"{config.name}-{stamp}-{suffix}"
    else:
        root = Path(run_dir)
        if (root / "model").exists() or (root / "checkpoints" / "last.pt").exists():
            raise RunDirError(f"Run directory '{root}' already holds a run.",
                              f"Pick a new --run-dir, or continue it with `foundry run --resume {root}`.")
    root.mkdir(parents=True, exist_ok=True)
    return root


def save_config(run_dir: Path, config: Config) -> None:
    write_text(run_dir / "config.yaml", dump_config(config))


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"'{run_dir}' is not a run directory: it has no config.yaml.",
                          "Pass a directory made by `foundry run` (they live under runs/ by default).")
    return load_config(path)


def save_model(run_dir: Path, model: Any, spec: dict[str, Any], preprocessor: Any, target_encoder: Any) -> None:
    """model/weights.pt (state_dict, loadable with weights_only), model/model.json, preprocess.pkl."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    write_bytes_atomic(run_dir / "preprocess.pkl", durable=True, data=pickle.dumps(
        {"format": FORMAT_VERSION, "preprocessor": preprocessor, "target_encoder": target_encoder}))
    write_bytes_atomic(run_dir / "model" / "weights.pt", buffer.getvalue(), durable=True)
    write_json(run_dir / "model" / "model.json", {"format": FORMAT_VERSION, **spec})


@dataclass
class SavedModel:
    run_dir: Path
    config: Config
    model: Any
    spec: dict[str, Any]
    preprocessor: Any
    target_encoder: Any

    @property
    def task(self) -> str:
        return self.spec["task"]

    @property
    def labels(self) -> list[str]:
        return [str(c) for c in self.spec.get("classes") or []]


def load_model(run_dir: str | Path) -> SavedModel:
    """Rebuild the trained model of a run directory, with its preprocessing, on the CPU."""
    import torch

    from modelfoundry.models import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"Run directory '{run_dir}' does not exist.", "List runs with `ls runs/`.")
    config = load_run_config(run_dir)
    spec_path = run_dir / "model" / "model.json"
    runtime = read_json(spec_path).get("runtime") if spec_path.is_file() else None
    weights = run_dir / "model" / ("onnx/model.onnx" if runtime == "onnx" else "weights.pt")
    needed = [weights, run_dir / "model" / "model.json", run_dir / "preprocess.pkl"]
    missing = [str(p.relative_to(run_dir)) for p in needed if not p.is_file()]
    if missing:
        raise RunDirError(f"Run directory '{run_dir}' has no trained model (missing {', '.join(missing)}).",
                          f"Finish training first: `foundry run --resume {run_dir}`.")
    spec = read_json(run_dir / "model" / "model.json")
    with open(run_dir / "preprocess.pkl", "rb") as handle:
        fitted = pickle.load(handle)  # noqa: S301 - our own file, written by save_model
    if runtime == "onnx":  # a compressed (int8, fp16) graph: evaluate and predict run what is served
        from modelfoundry.models.onnx_graph import OnnxGraph

        model = OnnxGraph(weights, spec["task"])
    else:
        model = build_model(config.model, tuple(spec["input_shape"]), spec["n_outputs"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    return SavedModel(run_dir, config, model, spec, fitted["preprocessor"], fitted["target_encoder"])
