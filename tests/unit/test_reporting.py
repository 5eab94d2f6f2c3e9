"""The library reports long work to the Reporter it is given and never prints by itself."""

from __future__ import annotations

from modelfoundry.reporting import Reporter, SilentReporter, reporter_for
from modelfoundry.train.callbacks import TrainingProgress


class RecordingReporter:
    """Every call, in order: what a test (or a web UI) sees of the work."""

    def __init__(self, live: bool):
        self.live = live
        self.calls: list[tuple] = []

    def start(self, task: str, total: int | None = None, *, completed: int = 0) -> None:
        self.calls.append(("start", task, total, completed))

    def advance(self, completed: int | None = None, *, status: str | None = None) -> None:
        self.calls.append(("advance", completed, status))

    def message(self, text: str) -> None:
        self.calls.append(("message", text))

    def finish(self) -> None:
        self.calls.append(("finish",))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


def epoch(e: int) -> dict:
    return {"epoch": e, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.75, "epoch_s": 10.0}


def test_every_implementation_satisfies_the_protocol():
    from modelfoundry.cli.progress import TerminalReporter

    for reporter in (SilentReporter(), RecordingReporter(True), TerminalReporter()):
        used: Reporter = reporter  # a type check, and the attributes every caller relies on
        assert isinstance(used.live, bool)
        for name in ("start", "advance", "message", "finish"):
            assert callable(getattr(used, name))


def test_no_reporter_means_no_reporting_work():
    assert reporter_for(None) is None and reporter_for(False) is None and reporter_for(True) is None
    silent = SilentReporter()
    assert reporter_for(silent) is silent


def test_training_on_a_live_reporter_moves_a_bar_with_the_epoch_status_and_logs_no_lines():
    reporter = RecordingReporter(live=True)
    progress = TrainingProgress(reporter, 3, 10, 1, "val_accuracy")  # resumed after epoch 1 of 3
    progress.on_steps(1, 4)
    for e in (2, 3):
        progress.on_epoch_end(epoch(e))
    progress.close()
    assert reporter.calls[0] == ("start", "train", 30, 10)
    assert reporter.calls[1] == ("advance", 14, None)
    assert reporter.calls[2] == ("advance", 20, "epoch 2/3  loss 0.5000  val_loss 0.2500  val_accuracy 0.7500")
    assert reporter.calls[3][:2] == ("advance", 30) and reporter.kinds()[-1] == "finish"
    assert "message" not in reporter.kinds()


def test_training_on_a_log_reporter_sends_epoch_lines():
    reporter = RecordingReporter(live=False)
    progress = TrainingProgress(reporter, 2, 10, 0, "val_loss")
    for e in (1, 2):
        progress.on_epoch_end(epoch(e))
    progress.close()
    assert [c[1] for c in reporter.calls if c[0] == "message"] == \
        ["epoch 1/2  loss 0.5000  val_loss 0.2500", "epoch 2/2  loss 0.5000  val_loss 0.2500"]
    assert reporter.kinds() == ["start", "message", "message", "finish"]


def test_cross_validation_reports_each_fold_and_prints_nothing(make_config, capsys):
    from modelfoundry.cv import cross_validate

    reporter = RecordingReporter(live=True)
    result = cross_validate(make_config(training={"epochs": 1}), folds=2, progress=reporter)
    assert reporter.calls[0] == ("start", "cross-validation", 2, 0)
    folds = [c[1] for c in reporter.calls if c[0] == "message"]
    assert [line.split()[1] for line in folds] == ["1/2", "2/2"] and "accuracy" in folds[0]
    assert reporter.kinds().count("advance") == 2 and reporter.kinds()[-1] == "finish"
    assert len(result.folds) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_a_run_without_a_reporter_prints_nothing(make_config, tmp_path, capsys):
    from modelfoundry.api.training import run

    result = run(make_config(training={"epochs": 2}), run_dir=tmp_path / "run")
    assert result.epochs_run == 2 and (tmp_path / "run" / "model" / "weights.pt").is_file()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
