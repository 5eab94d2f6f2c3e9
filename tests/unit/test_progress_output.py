"""Epoch lines off a terminal (logs, pipes): thinned with a notice, the last epoch always printed."""

from modelfoundry.cli.progress import TerminalReporter
from modelfoundry.train.callbacks import TrainingProgress, line_every


def records(epochs, epoch_s):
    return [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e, "val_accuracy": 0.5, "epoch_s": epoch_s}
            for e in epochs]


def shown(capsys, total, epochs, epoch_s, start=0, monitor="val_loss"):
    reporter = TerminalReporter()  # what `foundry run` passes; captured output is not a terminal
    assert not reporter.live
    display = TrainingProgress(reporter, total, 10, start, monitor)
    for record in records(epochs, epoch_s):
        display.on_epoch_end(record)
    display.close()
    return capsys.readouterr().out.splitlines()


def test_quick_epochs_are_thinned_with_a_notice_and_the_last_is_printed(capsys):
    lines = shown(capsys, 96, range(1, 38), 0.3)  # stopped early at epoch 37 of 96
    epochs = [line.split()[1] for line in lines if line.startswith("epoch ")]
    assert epochs == ["1/96", "20/96", "37/96"]
    assert "printing every 20th epoch and the last" in lines[1]


def test_slow_epochs_each_get_a_line_and_a_run_to_its_end_prints_its_last(capsys):
    lines = shown(capsys, 30, range(1, 31), 6.0)
    assert [line.split()[1] for line in lines] == [f"{e}/30" for e in range(1, 31)]
    lines = shown(capsys, 30, range(1, 31), 1.5)  # every 5th: 30 is a multiple, printed once
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == \
        ["1/30", "5/30", "10/30", "15/30", "20/30", "25/30", "30/30"]


def test_a_resumed_run_prints_from_where_it_resumed(capsys):
    lines = shown(capsys, 50, range(8, 13), 0.01, start=7, monitor="val_accuracy")
    assert lines[0].startswith("epoch 8/50") and "val_accuracy 0.5000" in lines[0]
    assert lines[-1].startswith("epoch 12/50")


def test_line_every_rounds_to_readable_steps():
    assert [line_every(s, 5.0) for s in (10, 5, 3, 1, 0.3, 0.01)] == [1, 1, 2, 5, 20, 500]


def test_a_long_epoch_says_how_far_it_is_every_interval(capsys, monkeypatch):
    from modelfoundry.train import callbacks

    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    display = TrainingProgress(TerminalReporter(), 1, 100, 0, "val_loss")
    for step in range(1, 100):
        clock[0] += 2.0  # 2 s per step: a line every 30 s, with the rate and what is left of the epoch
        display.on_steps(0, step)
    lines = [line for line in capsys.readouterr().out.splitlines() if "s/step" in line]
    assert 5 <= len(lines) <= 7
    assert lines[0].startswith("epoch 1/1  step 16/100  2.00 s/step, epoch done in ~2.8 min")
