"""The `foundry` script ends without the interpreter's teardown, but only after what a normal exit does
first: executor workers stopped, threads that are not daemons joined, atexit handlers run, streams flushed."""

import subprocess
import sys

SCRIPT = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from modelfoundry.cli import _exit_now

out = sys.argv[1]
def late_write():
    time.sleep(0.3)
    open(out + ".thread", "w").write("joined")
threading.Thread(target=late_write).start()
ThreadPoolExecutor(2).submit(lambda: None)  # an idle executor must not block the exit
atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
print("buffered line", end="")
_exit_now(3)
"""


def test_exit_now_joins_threads_runs_atexit_and_flushes(tmp_path):
    marker = tmp_path / "m"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(marker)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered line"
    assert (tmp_path / "m.thread").read_text() == "joined" and (tmp_path / "m.atexit").read_text() == "ran"


def test_the_script_keeps_exit_codes_and_output(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "validate", "examples/iris_missing.yaml"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 2 and "does not exist" in ok.stderr
    listed = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "datasets"], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0 and "sklearn:breast_cancer" in listed.stdout.splitlines()
