"""CLI refusals that need no KVM: one line on stderr, exit status 2, no traceback."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def paravm(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "paravm", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def one_line(p):
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_missing_kvm_device_is_one_line_and_2(tmp_path, hello_elf):
    m = tmp_path / "m.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{hello_elf}"\n')
    p = paravm("run", "--kvm", tmp_path / "no-kvm", m)
    assert p.returncode == 2
    line = one_line(p)
    assert line.startswith(f"paravm: {tmp_path / 'no-kvm'} does not exist")
    assert "KVM" in line


def test_kvm_device_that_is_not_kvm_is_one_line_and_2(tmp_path, hello_elf):
    m = tmp_path / "m.toml"
    m.write_text(f'[[domain]]\nname = "a"\nimage = "{hello_elf}"\n')
    p = paravm("run", "--kvm", "/dev/null", m)
    assert p.returncode == 2
    assert one_line(p).startswith("paravm: /dev/null")


def test_bad_manifest_is_one_line_naming_file_and_key(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('[[domain]]\nname = "a"\nimage = "x.elf"\nmemory = "lots"\n')
    p = paravm("run", m)
    assert p.returncode == 2
    assert one_line(p) == f"paravm: {m}: domain[0].memory: expected int, got str"


def test_version():
    p = paravm("version")
    assert p.returncode == 0 and p.stdout.startswith("paravm 0.")
