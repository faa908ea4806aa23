#!/usr/bin/env python3
"""The host as an IVC peer: a Python HostEndpoint talks to the example's server guest.

    .venv/bin/python examples/ivc/host.py
"""
from pathlib import Path

import paravm
from paravm.config import parse_manifest

HERE = Path(__file__).resolve().parent
MANIFEST = f"""
[[domain]]
name = "server"
image = "{HERE / 'ivc.elf'}"
memory = 16
args = ["server", "1", "3"]

[[ivc]]
id = 1
peers = ["server", "host"]
nframes = 4
frame_size = 64
"""

with paravm.Hypervisor() as hv:
    hv.create_from_manifest(parse_manifest(MANIFEST, HERE / "host.toml"))
    hv.start_all()
    ep = hv.ivc.host_endpoint(1)
    ep.establish(timeout=5)
    for word in ("from", "the", "host"):
        ep.write_wait(word.encode() + b"\0", timeout=5)
        reply = ep.read_wait(timeout=5).split(b"\0")[0].decode()
        print(f"host| sent {word!r}, got {reply!r}")
    results = hv.wait_all(timeout=10)
    raise SystemExit(0 if results and all(r.exit_code == 0 for r in results.values()) else 1)
