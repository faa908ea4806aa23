"""Ctrl-C stops every domain cleanly: exit status 130, one line, no traceback."""

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["forever", "spin"])
def test_sigint_stops_all_domains_with_130(guests, tmp_path, mode):
    m = tmp_path / "m.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{guests.hostile}"\nmemory = 16\n'
                 f'args = ["{mode}"]\n\n'
                 f'[[domain]]\nname = "b"\nimage = "{guests.hostile}"\nmemory = 16\n'
                 f'vcpus = 2\nargs = ["forever"]\n')
    p = subprocess.Popen([sys.executable, "-m", "paravm", "run", str(m)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # A silent, hung process must fail the test, not block readline: kill it.
    watchdog = threading.Timer(30, p.kill)
    watchdog.start()
    try:
        seen = set()
        while len(seen) < 2:   # both guests have printed: they are running
            line = p.stdout.readline()
            assert line, "guests did not start"
            seen.add(line.split("|")[0])
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        watchdog.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "paravm: interrupted: all domains stopped"
