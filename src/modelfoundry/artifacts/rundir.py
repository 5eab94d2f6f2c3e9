"""Every path of a run directory, in one place (pure paths: nothing here reads, writes or imports a stage).

    runs/<name>-<timestamp>/
      config.yaml  data.json  manifest.json  preprocess.json  metrics.jsonl  registered.json
      checkpoints/{last,best}.pt   eval/{metrics.json,report.md}
      model/{weights.pt,model.json,reference.json}   model/onnx/{model.onnx,preprocess.json,export.json}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportDir:
    """An exported model: `model/onnx/` of a run, or any directory `foundry export --out` wrote."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    GRAPH = "model.onnx"
    PREPROCESS = "preprocess.json"
    RECORD = "export.json"

    @property
    def graph(self) -> Path:
        return self.path / self.GRAPH

    @property
    def preprocess(self) -> Path:
        return self.path / self.PREPROCESS

    @property
    def record(self) -> Path:
        return self.path / self.RECORD


@dataclass(frozen=True)
class RunDir:
    """The layout of one run directory; `RunDir(path).weights` is `path/model/weights.pt`."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    CONFIG = "config.yaml"
    DATA_RECORD = "data.json"
    MANIFEST = "manifest.json"
    PREPROCESS = "preprocess.json"
    LEGACY_PREPROCESS = "preprocess.pkl"  # modelfoundry 0.1's pickle, read only by `foundry migrate`
    METRICS_LOG = "metrics.jsonl"
    REGISTERED = "registered.json"  # written once `run` has logged and registered the run
    MODEL_DIR = "model"
    EVAL_DIR = "eval"
    WEIGHTS = "model/weights.pt"  # the one file holding a pickle, read with torch.load(weights_only=True)
    MODEL_RECORD = "model/model.json"
    REFERENCE = "model/reference.json"  # the reference profile the monitor compares served data with
    FILES = (CONFIG, DATA_RECORD, MANIFEST, PREPROCESS, METRICS_LOG)  # the top-level files tracking logs
    DIRS = (MODEL_DIR, EVAL_DIR)  # the directories tracking logs

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def data_record(self) -> Path:
        return self.path / self.DATA_RECORD

    @property
    def manifest(self) -> Path:
        return self.path / self.MANIFEST

    @property
    def preprocess(self) -> Path:
        return self.path / self.PREPROCESS

    @property
    def legacy_preprocess(self) -> Path:
        return self.path / self.LEGACY_PREPROCESS

    @property
    def metrics_log(self) -> Path:
        return self.path / self.METRICS_LOG

    @property
    def registered(self) -> Path:
        return self.path / self.REGISTERED

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def eval_dir(self) -> Path:
        return self.path / self.EVAL_DIR

    @property
    def reeval_dir(self) -> Path:
        """Where `foundry evaluate` writes when eval/ holds the run's own report (which it keeps)."""
        return self.path / "eval-test-split"

    @property
    def eval_metrics(self) -> Path:
        return self.eval_dir / "metrics.json"

    @property
    def report(self) -> Path:
        return self.eval_dir / "report.md"

    @property
    def model_dir(self) -> Path:
        return self.path / self.MODEL_DIR

    @property
    def weights(self) -> Path:
        return self.path / self.WEIGHTS

    @property
    def model_record(self) -> Path:
        return self.path / self.MODEL_RECORD

    @property
    def reference(self) -> Path:
        return self.path / self.REFERENCE

    @property
    def export(self) -> ExportDir:
        """The run's own ONNX export (`foundry export` without --out), where the server looks first."""
        return ExportDir(self.model_dir / "onnx")

    @property
    def onnx_dir(self) -> Path:
        return self.export.path
