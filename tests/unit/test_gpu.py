"""CUDA paths: device auto-selection, fp16 with a grad scaler, bf16 autocast. Skipped without a GPU."""

import pytest
import torch

from modelfoundry.data.prepare import prepare_data
from modelfoundry.models import build_model
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything, select_device

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_auto_device_is_cuda():
    assert select_device("auto").type == "cuda"


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_mixed_precision_trains_on_cuda(make_config, precision, tmp_path):
    cfg = make_config(data={"source": "sklearn:digits", "features": {"pixel_*": {"type": "image"}}},
                      model={"name": "cnn", "channels": [8, 16]},
                      training={"epochs": 4, "precision": precision, "optimizer": {"lr": 0.01}})
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(cfg.seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    result = fit(model, data.X, data.y, cfg.training, task=data.task, seed=0, run_dir=tmp_path, progress=False)
    assert result.device.startswith("cuda") and result.history[-1]["val_accuracy"] > 0.8
    assert next(result.model.parameters()).dtype == torch.float32  # autocast keeps fp32 master weights
    state = torch.load(tmp_path / "checkpoints/last.pt", weights_only=False)
    assert (state["scaler"] is not None) == (precision == "fp16")
