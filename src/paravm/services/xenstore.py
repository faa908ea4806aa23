"""A small xenstore: the key-value store Xen domains meet through.

Xen's PV protocols find each other in xenstore: a vchan server writes
``<path>/ring-ref`` and ``<path>/event-channel`` readable by its client only,
the client reads them (specs/grant-mpt.md §D2.9).  paravm models the part of
xenstore those rendezvous need, in the VMM, with xenstore's rules:

* paths are absolute (``/local/domain/3/data/x``) or relative to the
  caller's home ``/local/domain/<domid>``; at most 3072 bytes
  (``XENSTORE_ABS_PATH_MAX``), of ``[A-Za-z0-9/_@-.]``, no empty component;
  values at most 4096 bytes (``XENSTORE_PAYLOAD_MAX``);
* a node has an owner (the domain that created it) and may name one other
  domain that can read it (``xs_set_permissions`` with ``XS_PERM_READ``);
  the host (domain 0) reads and writes everything, and a domain reads the
  nodes in its own home whoever made them (the toolstack gives a domain its
  home in Xen);
* a guest creates nodes only under its own home; writing or removing a node
  it does not own is ``EACCES``, reading one it may not read is ``EACCES``,
  a missing node ``ENOENT``;
* when a domain stops, its home is removed (the toolstack does this in Xen).

Not modelled: transactions, watches (guests poll; the host can block in
:meth:`XenStore.wait`), directory listing, the wire protocol on a ring page.
Guests reach it with hypercall ``xenstore_op`` = 33 (docs/xenstore.md).
"""

from __future__ import annotations

import re
import threading
import time
from errno import E2BIG, EACCES, EINVAL, ENOENT, ENOSPC

from ..hypercall.table import HypercallError, guest_buffer

HC_XENSTORE_OP = 33
XS_READ, XS_WRITE, XS_RM = 0, 1, 2
PATH_MAX = 3072
VALUE_MAX = 4096
NO_READER = 0x7FF4        # DOMID_INVALID: only the owner (and the host) read it
MAX_NODES_PER_DOMAIN = 1000

_PATH = re.compile(r"[A-Za-z0-9/_@.\-]+")


class XenStoreError(OSError):
    """A refused xenstore call; ``errno`` is the Linux errno xenstored returns."""


class _Node:
    __slots__ = ("value", "owner", "reader")

    def __init__(self, value: bytes, owner: int, reader: int) -> None:
        self.value, self.owner, self.reader = value, owner, reader


class XenStore:
    """The store of one hypervisor.  Thread-safe (vCPU threads and the host)."""

    def __init__(self, specs=()) -> None:
        # Guests that get the hypercall: those with Xen services.
        self._guests = {s.name for s in specs if getattr(s, "xen", None) is not None}
        self._nodes: dict[str, _Node] = {}
        self._cond = threading.Condition()

    # --- the host / VMM API --------------------------------------------------------------
    def read(self, path: str, caller: int = 0) -> bytes:
        """The value at *path* as *caller* sees it; :class:`XenStoreError`
        ENOENT / EACCES / EINVAL."""
        path = self._path(path, caller)
        with self._cond:
            node = self._nodes.get(path)
            if node is None:
                raise XenStoreError(ENOENT, f"{path}: no such node")
            if (caller not in (0, node.owner, node.reader)
                    and not path.startswith(f"/local/domain/{caller}/")):
                raise XenStoreError(EACCES, f"{path}: domain {caller} may not read it")
            return node.value

    def write(self, path: str, value: bytes | str, *, caller: int = 0,
              reader: int = NO_READER) -> None:
        """Create or replace *path*; *reader* may read it besides its owner.
        :class:`XenStoreError` EACCES (not the caller's), EINVAL (bad path),
        E2BIG (value > 4096 bytes), ENOSPC (a guest's 1000-node quota)."""
        if isinstance(value, str):
            value = value.encode()
        path = self._path(path, caller)
        if len(value) > VALUE_MAX:
            raise XenStoreError(E2BIG, f"{path}: value of {len(value)} bytes")
        if caller and not path.startswith(f"/local/domain/{caller}/"):
            raise XenStoreError(EACCES, f"{path}: outside domain {caller}'s home")
        with self._cond:
            node = self._nodes.get(path)
            if node is not None and caller not in (0, node.owner):
                raise XenStoreError(EACCES, f"{path}: owned by domain {node.owner}")
            if node is None and caller and self._count(caller) >= MAX_NODES_PER_DOMAIN:
                raise XenStoreError(ENOSPC, f"domain {caller} has {MAX_NODES_PER_DOMAIN} nodes")
            owner = node.owner if node is not None else caller
            self._nodes[path] = _Node(bytes(value), owner, reader)
            self._cond.notify_all()

    def rm(self, path: str, caller: int = 0) -> None:
        """Remove *path* and everything under it (ENOENT, EACCES)."""
        path = self._path(path, caller)
        with self._cond:
            doomed = [p for p in self._nodes if p == path or p.startswith(path + "/")]
            if not doomed:
                raise XenStoreError(ENOENT, f"{path}: no such node")
            if caller and any(self._nodes[p].owner != caller for p in doomed):
                raise XenStoreError(EACCES, f"{path}: not all owned by domain {caller}")
            for p in doomed:
                del self._nodes[p]
            self._cond.notify_all()

    def wait(self, path: str, timeout: float) -> bytes:
        """Block until *path* exists (the host's stand-in for a watch); its
        value.  ``TimeoutError`` after *timeout* s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                node = self._nodes.get(self._path(path, 0))
                if node is not None:
                    return node.value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"xenstore: {path} did not appear in {timeout}s")
                self._cond.wait(left)

    def domain_stopped(self, domain) -> None:
        """Remove the stopped domain's home."""
        try:
            self.rm(f"/local/domain/{domain.domid}")
        except XenStoreError:
            pass

    def _count(self, domid: int) -> int:
        return sum(1 for n in self._nodes.values() if n.owner == domid)

    @staticmethod
    def _path(path: str, caller: int) -> str:
        if not path.startswith("/"):
            path = f"/local/domain/{caller}/{path}"
        if (len(path) > PATH_MAX or not _PATH.fullmatch(path) or "//" in path
                or path.endswith("/") and path != "/"):
            raise XenStoreError(EINVAL, f"bad xenstore path {path[:80]!r}")
        return path

    # --- guests ------------------------------------------------------------------------------
    def attach(self, domain) -> None:
        """The ``xenstore_op`` hypercall for *domain*:

        ``(XS_READ, path, path_len, buf, buf_len)`` -> the value's length
        (at most *buf_len* bytes copied); ``(XS_WRITE, path, path_len, value,
        value_len, reader_domid)`` -> 0; ``(XS_RM, path, path_len)`` -> 0.
        Errors: ``-ENOENT``, ``-EACCES``, ``-EINVAL``, ``-E2BIG``,
        ``-ENOSPC``, ``-EFAULT`` for buffers outside guest memory."""
        if domain.name not in self._guests:
            return
        domid, mem = domain.domid, domain.memory

        def op(vcpu, cmd, path_gpa, path_len, a3, a4, a5):
            if path_len > PATH_MAX:
                raise HypercallError(EINVAL, "path too long")
            with guest_buffer(mem, path_gpa, path_len) as view:
                raw = bytes(view)
            try:
                path = raw.decode("ascii")
                if cmd == XS_READ:
                    value = self.read(path, domid)
                    if a4 and value:
                        n = min(a4, len(value))
                        with guest_buffer(mem, a3, n, writable=True) as view:
                            view[:] = value[:n]
                    return len(value)
                if cmd == XS_WRITE:
                    if a4 > VALUE_MAX:
                        raise HypercallError(E2BIG, "value too long")
                    reader = a5 if a5 < 0x10000 else NO_READER
                    with guest_buffer(mem, a3, a4) as view:
                        value = bytes(view)
                    self.write(path, value, caller=domid, reader=reader)
                    return 0
                if cmd == XS_RM:
                    self.rm(path, domid)
                    return 0
            except UnicodeDecodeError:
                raise HypercallError(EINVAL, "path not ASCII") from None
            except XenStoreError as e:
                raise HypercallError(e.errno, str(e)) from None
            raise HypercallError(EINVAL, f"xenstore op {cmd}")

        domain.hypercalls.register(HC_XENSTORE_OP, "xenstore_op", op)

    def close(self) -> None:
        with self._cond:
            self._nodes.clear()
