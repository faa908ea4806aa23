"""Helpers for KVM tests that run several instances of one test guest."""

from __future__ import annotations

import re
import time

from paravm.config import parse_manifest


def guests_manifest(tmp_path, elf, domains, *, memory=16, vcpus=1, extra="xen = {}"):
    """A checked manifest of one ``[[domain]]`` per ``(name, args)`` in
    *domains*, all running *elf*; *extra* is added to each (by default the
    Xen services; ``""`` for none)."""
    text = ""
    for name, args in domains:
        quoted = ", ".join(f'"{a}"' for a in args)
        text += (f'[[domain]]\nname = "{name}"\nimage = "{elf}"\nmemory = {memory}\n'
                 f"vcpus = {vcpus}\nargs = [{quoted}]\n{extra}\n\n")
    return parse_manifest(text, tmp_path / "m.toml")


def wait_console(dom, pattern, timeout=20):
    """Wait until the regular expression *pattern* matches *dom*'s console;
    the match.  Fails the test if the domain stops first or *timeout* s pass."""
    deadline = time.monotonic() + timeout
    while not (m := re.search(pattern, dom.console.text)):
        assert not dom.stopped, dom.console.text
        assert time.monotonic() < deadline, dom.console.text
        time.sleep(0.002)
    return m
