"""The TOML manifest: which domains to build, from which images, with how much memory.

A manifest is read in three steps, each of which can only fail with `ManifestError`:

1. ``tomllib`` turns the text into plain data (syntax errors keep tomllib's line and column);
2. ``msgspec.convert`` checks that data against the ``_Raw*`` structs below: the *shape* of the
   file (required keys, types, numeric ranges, no unknown keys), in one compiled pass;
3. one ``_build_*`` function per table checks what a schema cannot say (unique names, the
   image exists, the packed size of the arguments) and makes the frozen public objects.

msgspec reports a failure as one message ending in a JSON-path-like location
(``Expected `int`, got `str` - at `$.domain[0].memory```); `_from_validation_error` turns that
into the dotted key and the short reason that every error of this module carries.

Two keys take a value from the command line rather than the file: a block device's ``path``
may be ``"{input}"``, the file given with ``paravm run --input FILE`` (``load_manifest(path,
input=FILE)``), and ``[host] program`` names a Python file the CLI runs as domain 0 beside the
guests (docs/manifest.md).

Adding a table (``[[ivc]]``, ``[pvz]``, ...) is: a ``_Raw*`` struct, one field for it in
`_RawManifest`, one ``_build_*`` function, one field in `Manifest`.
"""

from __future__ import annotations

import pathlib
import re
import tomllib
from typing import Annotated, Any, NoReturn

import msgspec

from ..limits import (DOMAIN_NAME_PATTERN, MEMORY_MIB_MAX, MEMORY_MIB_MIN, VCPUS_MAX,
                      VCPUS_MIN)

__all__ = [
    "ARGS_MAX_BYTES",
    "DOMAIN_NAME_PATTERN",
    "BlockSpec",
    "ConsoleSpec",
    "DomainSpec",
    "IvcMempoolSpec",
    "IvcSpec",
    "Manifest",
    "NetSpec",
    "PvzSpec",
    "DomainPvzSpec",
    "DomainMgpuSpec",
    "XenSpec",
    "HostSpec",
    "INPUT_PLACEHOLDER",
    "ManifestError",
    "load_manifest",
    "parse_manifest",
]

RESERVED_DOMAIN_NAMES = frozenset({"host"})  # the host is domain 0
MEMORY_MIB_DEFAULT = 64
VCPUS_DEFAULT = 1
IVC_ID_MAX = 0xFFFF
IVC_MEMPOOL_MAX = 1 << 30   # bytes per mempool
LGUEST_MAX_DEVICES = 16
PVZ_NUM_OS = 8              # RGXFW_NUM_OS: OSIDs 1..7 are guests'
PVZ_HEAP_MAX = 8 << 20      # bytes per OSID (RGX_FW_HEAP_SHIFT 23, the DDK's value under VZ)
PVZ_PRIORITY_MAX = (1 << 30) - 1
# lguest_block_page.num_sectors is 32 bits: the largest disk, in bytes.
LGUEST_DISK_MAX_BYTES = 0xFFFFFFFF * 512
INPUT_PLACEHOLDER = "{input}"   # a block path standing for `paravm run --input FILE`
ARGS_MAX_BYTES = 2048  # sum over args of len(utf-8) + 1 (the NUL that ends each one in the guest)

# fullmatch, not msgspec's Meta(pattern=...): that one uses re.search, where `$` also matches
# before a trailing newline, so "alice\n" would pass.
_DOMAIN_NAME_RE = re.compile(DOMAIN_NAME_PATTERN[1:-1])
_MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Public objects


class ManifestError(Exception):
    """A manifest that cannot be used, with where and why.

    Attributes:
        file: the manifest path as given to `load_manifest` / `parse_manifest`.
        key: dotted path of the offending key, e.g. ``domain[1].memory``; ``""`` for
            file-level errors (unreadable file, TOML syntax).
        reason: a short phrase, e.g. ``missing required key``, ``expected int, got str``.

    ``str(err)`` is ``"{file}: {key}: {reason}"``, or ``"{file}: {reason}"`` when key is empty.
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.reason}"
        return f"{self.file}: {self.reason}"


class ConsoleSpec(msgspec.Struct, frozen=True):
    """An lguest console (``type = "console"``): output to the domain's console
    stream; input from *input*: ``None`` (none), ``"stdin"``, or an absolute path."""

    input: pathlib.Path | str | None = None


class BlockSpec(msgspec.Struct, frozen=True):
    """An lguest block device (``type = "block"``) over the image file *path*
    (absolute); *readonly* refuses the guest's writes; *input*: the path was
    ``"{input}"`` in the file."""

    path: pathlib.Path
    readonly: bool = False
    input: bool = False   # path came from ``"{input}"`` (paravm run --input)


class NetSpec(msgspec.Struct, frozen=True):
    """An lguest network card (``type = "net"``) on the virtual LAN *lan*
    (guests naming the same LAN share it)."""

    lan: str


class DomainSpec(msgspec.Struct, frozen=True):
    """One ``[[domain]]`` table, checked.

    Attributes:
        name: unique, matches `DOMAIN_NAME_PATTERN`, never ``host``.
        domid: 1, 2, ... in manifest order (domain 0 is the host).
        image: absolute, resolved path of an existing regular file (the guest ELF).
        memory_mib: guest RAM in MiB, 2..3072.
        vcpus: number of vCPUs, 1..32.
        args: the guest's arguments; packed size (utf-8 + NUL each) <= `ARGS_MAX_BYTES`.
        devices: the lguest devices of ``[[domain.device]]``, in order (device *i* has
            lguest irq *i* + 1); at most 16, at most one console.
        xen: the Xen services (grant table, grant windows, event channels) of a
            ``[domain.xen]`` table, or ``None`` when the domain has none.
        pvz: the domain's PVZ identity (``[domain.pvz]``: OSID and priority), or
            ``None`` when it has no PVZ connection.
        mgpu: the domain's example mediated GPU (``[domain.mgpu]``), or ``None``.
    """

    name: str
    domid: int
    image: pathlib.Path
    memory_mib: int
    vcpus: int
    args: tuple[str, ...]
    devices: tuple[ConsoleSpec | BlockSpec | NetSpec, ...] = ()
    xen: "XenSpec | None" = None
    pvz: "DomainPvzSpec | None" = None
    mgpu: "DomainMgpuSpec | None" = None

    @property
    def memory_bytes(self) -> int:
        """Guest RAM in bytes (``memory_mib * 2**20``)."""
        return self.memory_mib * _MiB


class XenSpec(msgspec.Struct, frozen=True):
    """A ``[domain.xen]`` table, checked: the domain gets a Xen grant table, grant
    windows and event channels (docs/grant.md, docs/evtchn.md).  Defaults are Xen's.

    Attributes:
        max_grant_frames: grant table pages, 1..256 (Xen's ``gnttab_max_frames``, 64:
            32768 refs).
        max_maptrack_frames: 1..1024; the domain may hold ``256 *`` this many mappings
            of others' grants at once (Xen's ``gnttab_max_maptrack_frames``, 1024).
        grant_window_pages: pages of each grant window (read-write and read-only),
            1..4096 (paravm's; 4096 = 16 MiB).
        max_evtchn_ports: event channel ports, 1..4096 (the 2-level ABI's 4096).
    """

    max_grant_frames: int = 64
    max_maptrack_frames: int = 1024
    grant_window_pages: int = 4096
    max_evtchn_ports: int = 4096


class DomainPvzSpec(msgspec.Struct, frozen=True):
    """A ``[domain.pvz]`` table, checked: the domain is a PVZ guest.

    Attributes:
        osid: 1..7, unique; the VMM stamps it on every PVZ call of the domain
            (a guest never chooses it).
        priority: 0..2^30-1, given to OnVmOnline when the domain starts; a
            higher number is a higher scheduling priority (the DDK's rule).
    """

    osid: int
    priority: int = 0


class DomainMgpuSpec(msgspec.Struct, frozen=True):
    """A ``[domain.mgpu]`` table, checked: the domain gets an instance of the
    example mediated GPU (docs/mpt.md).

    Attributes:
        png: where the host writes the surface of each PRESENT command, as PNG
            (absolute; given relative to the manifest; its directory exists), or
            ``None``: presents are counted, nothing is written.
    """

    png: "pathlib.Path | None" = None


class PvzSpec(msgspec.Struct, frozen=True):
    """The ``[pvz]`` table, checked: the host driver's PVZ configuration
    (docs/pvz.md).

    Attributes:
        origin: ``"guest"`` (each guest allocates its firmware heap in its RAM and
            maps it with MapDevPhysHeap: the DDK's dynamic default) or ``"host"``
            (the host carves out every OSID's firmware heap at start: static).
        fw_heap_size: bytes of each OSID's firmware heap (RGX_FIRMWARE_HEAP_SIZE),
            a multiple of 4096, 64 KiB..8 MiB (default 8 MiB, the DDK's under VZ).
        gpu_heap_size: bytes of each OSID's GPU heap slice in a host carve-out, a
            multiple of 4096, 0..8 MiB; 0 (default): no carve-out (UMA).
        hcs_deadline_ms: the firmware's hard context switch deadline
            (VMMConfigure HCS_DEADLINE), default 0xFFFFFFFF (none), the DDK's.
    """

    origin: str = "guest"
    fw_heap_size: int = PVZ_HEAP_MAX
    gpu_heap_size: int = 0
    hcs_deadline_ms: int = 0xFFFFFFFF


class IvcSpec(msgspec.Struct, frozen=True):
    """One ``[[ivc]]`` table, checked: a Tegra IVC queue between two peers.

    Attributes:
        id: the queue id (unique; a loopback queue also takes ``id + 1``, see below).
        peers: two domain names, or ``"host"`` (domain 0) for a Python endpoint in the
            VMM; equal names make a loopback queue: both ends in one domain, described to
            it as the two consecutive queues ``id`` (even) and ``id + 1``, as the Tegra
            hypervisor does ("loopback queue ids are always consecutive").
        nframes: frames per direction (>= 1).
        frame_size: bytes per frame, a multiple of 64 (>= 64); nframes * frame_size < 2^32.
    """

    id: int
    peers: tuple[str, str]
    nframes: int
    frame_size: int

    @property
    def loopback(self) -> bool:
        return self.peers[0] == self.peers[1]


class IvcMempoolSpec(msgspec.Struct, frozen=True):
    """One ``[[ivc_mempool]]`` table, checked: a Tegra IVM mempool, a block of
    memory shared by two peers (specs §A.1.4 ``struct ivc_mempool``).

    Attributes:
        id: the mempool id (unique among mempools; its own namespace, as in the reference).
        peers: two different domain names, or one of them ``"host"``.
        size: bytes, a multiple of 4096, at most 1 GiB.
    """

    id: int
    peers: tuple[str, str]
    size: int


class HostSpec(msgspec.Struct, frozen=True):
    """``[host]``: the Python *program* (absolute path of a regular file) that
    ``paravm run`` loads and runs as domain 0 once the domains have started:
    its ``main(run)`` gets a `paravm.hostprog.HostRun`."""

    program: pathlib.Path


class Manifest(msgspec.Struct, frozen=True):
    """A checked manifest.

    Attributes:
        path: absolute path of the manifest file.
        domains: one `DomainSpec` per ``[[domain]]``, in file order (so ``domains[i].domid``
            is ``i + 1``); never empty.
        host: the ``[host]`` table, or None.
        input: the ``--input`` file the manifest was loaded with (absolute, resolved), or None.
    """

    path: pathlib.Path
    domains: tuple[DomainSpec, ...]
    ivc: tuple[IvcSpec, ...] = ()
    ivc_mempool: tuple[IvcMempoolSpec, ...] = ()
    pvz: PvzSpec | None = None
    host: HostSpec | None = None
    input: pathlib.Path | None = None

    @property
    def uses_input(self) -> bool:
        """Whether some block device's path is ``"{input}"``."""
        return any(isinstance(d, BlockSpec) and d.input for s in self.domains for d in s.devices)

    def domain(self, name: str) -> DomainSpec:
        """The domain called *name*; raises KeyError if there is none."""
        for spec in self.domains:
            if spec.name == name:
                return spec
        raise KeyError(name)


def load_manifest(path: str | pathlib.PathLike[str], *,
                  input: str | pathlib.PathLike[str] | None = None) -> Manifest:
    """Read and check the manifest file at *path* (UTF-8 TOML).

    Relative image paths are taken from the manifest's directory. *input* is the file a
    block device's ``path = "{input}"`` stands for (relative to the current directory; it
    must be a regular file); without it such a device is an error.
    Raises ManifestError (with key ``""`` if the file cannot be read or decoded).
    """
    file = str(path)
    p = pathlib.Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ManifestError(file, "", f"file not found: {p.absolute()}") from None
    except IsADirectoryError:
        raise ManifestError(file, "", f"is a directory: {p.absolute()}") from None
    except (OSError, ValueError) as e:  # ValueError: embedded NUL in the path
        raise ManifestError(file, "", f"cannot read: {_os_reason(e)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(file, "", f"not valid UTF-8 (byte offset {e.start})") from None
    return parse_manifest(text, path, input=input)


def parse_manifest(text: str, path: str | pathlib.PathLike[str], *,
                   input: str | pathlib.PathLike[str] | None = None) -> Manifest:
    """Check the manifest *text*, as if read from *path*.

    *path* names the file in errors and its directory anchors relative image paths; the
    file itself is not read. *input* as for `load_manifest`. Raises ManifestError for any
    text that is not a valid manifest.
    """
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(file, "", f"TOML syntax error: {e}") from None
    except RecursionError:
        raise ManifestError(file, "", "TOML syntax error: values nested too deeply") from None
    return _from_data(data, pathlib.Path(path), file, input)


# --------------------------------------------------------------------------------------------
# Raw shape of the file, as msgspec checks it. Field names are the TOML keys.


class _RawConsole(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="console"):
    input: str | None = None


class _RawBlock(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="block"):
    path: str
    readonly: bool = False


class _RawNet(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="net"):
    lan: str


class _RawDomain(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    image: str
    memory: Annotated[int, msgspec.Meta(ge=MEMORY_MIB_MIN, le=MEMORY_MIB_MAX)] = MEMORY_MIB_DEFAULT
    vcpus: Annotated[int, msgspec.Meta(ge=VCPUS_MIN, le=VCPUS_MAX)] = VCPUS_DEFAULT
    args: tuple[str, ...] = ()
    device: tuple[_RawConsole | _RawBlock | _RawNet, ...] = ()
    xen: "_RawXen | None" = None
    pvz: "_RawDomainPvz | None" = None
    mgpu: "_RawDomainMgpu | None" = None


class _RawDomainMgpu(msgspec.Struct, forbid_unknown_fields=True):
    png: str | None = None


class _RawDomainPvz(msgspec.Struct, forbid_unknown_fields=True):
    osid: Annotated[int, msgspec.Meta(ge=1, le=PVZ_NUM_OS - 1)]
    priority: Annotated[int, msgspec.Meta(ge=0, le=PVZ_PRIORITY_MAX)] = 0


class _RawPvz(msgspec.Struct, forbid_unknown_fields=True):
    origin: str = "guest"
    fw_heap_size: Annotated[int, msgspec.Meta(ge=64 * 1024, le=PVZ_HEAP_MAX)] = PVZ_HEAP_MAX
    gpu_heap_size: Annotated[int, msgspec.Meta(ge=0, le=PVZ_HEAP_MAX)] = 0
    hcs_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] = 0xFFFFFFFF


class _RawXen(msgspec.Struct, forbid_unknown_fields=True):
    max_grant_frames: Annotated[int, msgspec.Meta(ge=1, le=256)] = 64
    max_maptrack_frames: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 1024
    grant_window_pages: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 4096
    max_evtchn_ports: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 4096


class _RawIvc(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=0, le=IVC_ID_MAX)]
    peers: tuple[str, str]
    nframes: Annotated[int, msgspec.Meta(ge=1, le=1 << 26)]
    frame_size: Annotated[int, msgspec.Meta(ge=64, le=1 << 26)]


class _RawIvcMempool(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[int, msgspec.Meta(ge=0, le=IVC_ID_MAX)]
    peers: tuple[str, str]
    size: Annotated[int, msgspec.Meta(ge=4096, le=IVC_MEMPOOL_MAX)]


class _RawHost(msgspec.Struct, forbid_unknown_fields=True):
    program: str


class _RawManifest(msgspec.Struct, forbid_unknown_fields=True):
    # Optional in the schema so that an empty file gets the clearer reason of _build_domains.
    domain: tuple[_RawDomain, ...] = ()
    ivc: tuple[_RawIvc, ...] = ()
    ivc_mempool: tuple[_RawIvcMempool, ...] = ()
    pvz: _RawPvz | None = None
    host: _RawHost | None = None


# --------------------------------------------------------------------------------------------
# Checks a schema cannot express, and the public objects.


class _Context(msgspec.Struct, frozen=True):
    file: str  # as the caller named it, for errors
    base: pathlib.Path  # absolute directory that relative paths start from
    input: pathlib.Path | None = None  # the --input file, absolute (not yet checked)

    def fail(self, key: str, reason: str) -> NoReturn:
        raise ManifestError(self.file, key, reason)


def _from_data(data: Any, path: pathlib.Path, file: str, input=None) -> Manifest:
    """Check already-parsed TOML *data* (a dict) and build the Manifest."""
    try:
        abs_path = path.absolute()
        abs_input = None if input is None else pathlib.Path(input).absolute()
    except (OSError, ValueError) as e:  # the current directory is gone
        raise ManifestError(file, "", f"cannot resolve the manifest path: {_os_reason(e)}") from None
    ctx = _Context(file, abs_path.parent, abs_input)
    try:
        raw = msgspec.convert(data, _RawManifest)
    except msgspec.ValidationError as e:
        raise _from_validation_error(str(e), data, file) from None
    except RecursionError:
        ctx.fail("", "values nested too deeply")
    domains = _build_domains(raw.domain, ctx)
    host = None
    if raw.host is not None:
        host = HostSpec(program=_regular_file(raw.host.program, "host.program", ctx))
    checked_input = None
    if abs_input is not None:       # checked with its device's key, else here
        checked_input = next((d.path for s in domains for d in s.devices
                              if isinstance(d, BlockSpec) and d.input), None)
        checked_input = checked_input or _input_file(abs_input, "", ctx)
    return Manifest(path=abs_path, domains=domains, ivc=_build_ivc(raw.ivc, domains, ctx),
                    ivc_mempool=_build_mempools(raw.ivc_mempool, domains, ctx),
                    pvz=_build_pvz(raw.pvz, raw.domain, ctx), host=host,
                    input=checked_input)


def _build_domains(raws: tuple[_RawDomain, ...], ctx: _Context) -> tuple[DomainSpec, ...]:
    if not raws:
        ctx.fail("domain", "at least one [[domain]] table is required")
    seen: dict[str, int] = {}
    specs = []
    for i, raw in enumerate(raws):
        key = f"domain[{i}]"
        if not _DOMAIN_NAME_RE.fullmatch(raw.name):
            ctx.fail(f"{key}.name", f"must match {DOMAIN_NAME_PATTERN}")
        if raw.name in RESERVED_DOMAIN_NAMES:
            ctx.fail(f"{key}.name", f"{raw.name!r} is reserved (the host is domain 0)")
        if raw.name in seen:
            ctx.fail(f"{key}.name", f"duplicate domain name {raw.name!r} (also domain[{seen[raw.name]}])")
        seen[raw.name] = i
        specs.append(
            DomainSpec(
                name=raw.name,
                domid=i + 1,
                image=_regular_file(raw.image, f"{key}.image", ctx),
                memory_mib=raw.memory,
                vcpus=raw.vcpus,
                args=_guest_args(raw.args, f"{key}.args", ctx),
                devices=_devices(raw, key, ctx),
                xen=None if raw.xen is None else XenSpec(**msgspec.structs.asdict(raw.xen)),
                pvz=None if raw.pvz is None else DomainPvzSpec(raw.pvz.osid, raw.pvz.priority),
                mgpu=None if raw.mgpu is None else _build_mgpu(raw.mgpu, f"{key}.mgpu", ctx),
            )
        )
    return tuple(specs)


def _build_pvz(raw: _RawPvz | None, domains: tuple[_RawDomain, ...],
               ctx: _Context) -> PvzSpec | None:
    osids: dict[int, int] = {}
    for i, d in enumerate(domains):
        if d.pvz is None:
            continue
        if raw is None:
            ctx.fail(f"domain[{i}].pvz", "a PVZ guest needs the [pvz] table")
        if d.pvz.osid in osids:
            ctx.fail(f"domain[{i}].pvz.osid", f"OSID {d.pvz.osid} is taken by "
                     f"domain[{osids[d.pvz.osid]}]")
        osids[d.pvz.osid] = i
    if raw is None:
        return None
    if raw.origin not in ("guest", "host"):
        ctx.fail("pvz.origin", f"must be \"guest\" or \"host\", got {raw.origin!r}")
    for key in ("fw_heap_size", "gpu_heap_size"):
        if getattr(raw, key) % 4096:
            ctx.fail(f"pvz.{key}", "must be a multiple of 4096")
    return PvzSpec(raw.origin, raw.fw_heap_size, raw.gpu_heap_size, raw.hcs_deadline_ms)


def _devices(raw: _RawDomain, key: str, ctx: _Context) -> tuple:
    if not raw.device:
        return ()
    if len(raw.device) > LGUEST_MAX_DEVICES:
        ctx.fail(f"{key}.device", f"at most {LGUEST_MAX_DEVICES} devices")
    if raw.memory >= MEMORY_MIB_MAX:
        ctx.fail(f"{key}.memory", f"must be below {MEMORY_MIB_MAX} with devices "
                 "(their pages lie just above RAM)")
    out = []
    consoles = 0
    for j, dev in enumerate(raw.device):
        dkey = f"{key}.device[{j}]"
        if isinstance(dev, _RawConsole):
            consoles += 1
            if consoles > 1:
                ctx.fail(f"{dkey}.type", "at most one console")
            inp = dev.input
            if inp is not None and inp != "stdin":
                inp = _regular_file(inp, f"{dkey}.input", ctx)
            out.append(ConsoleSpec(input=inp))
        elif isinstance(dev, _RawBlock):
            if dev.path == INPUT_PLACEHOLDER:
                if ctx.input is None:
                    ctx.fail(f"{dkey}.path", f"{INPUT_PLACEHOLDER} stands for the file of "
                             "`paravm run --input FILE`, and none was given")
                path = _input_file(ctx.input, f"{dkey}.path", ctx)
                _disk_size(path, f"{dkey}.path", ctx, "--input: ")
                out.append(BlockSpec(path=path, readonly=dev.readonly, input=True))
            else:
                path = _regular_file(dev.path, f"{dkey}.path", ctx)
                _disk_size(path, f"{dkey}.path", ctx, "")
                out.append(BlockSpec(path=path, readonly=dev.readonly))
        else:
            if not _DOMAIN_NAME_RE.fullmatch(dev.lan):
                ctx.fail(f"{dkey}.lan", f"must match {DOMAIN_NAME_PATTERN}")
            if any(isinstance(o, NetSpec) and o.lan == dev.lan for o in out):
                ctx.fail(f"{dkey}.lan", f"a second card on LAN {dev.lan!r}")
            out.append(NetSpec(lan=dev.lan))
    return tuple(out)


def _known_peers(peers: tuple[str, str], names: set[str], key: str, ctx: _Context) -> None:
    for j, peer in enumerate(peers):
        if peer not in names:
            ctx.fail(f"{key}.peers[{j}]", f"unknown domain {peer!r}")


def _build_ivc(raws: tuple[_RawIvc, ...], domains: tuple[DomainSpec, ...],
               ctx: _Context) -> tuple[IvcSpec, ...]:
    names = {d.name for d in domains} | {"host"}
    taken: dict[int, int] = {}
    specs = []
    for i, raw in enumerate(raws):
        key = f"ivc[{i}]"
        _known_peers(raw.peers, names, key, ctx)
        if raw.peers == ("host", "host"):
            ctx.fail(f"{key}.peers", "a queue needs a guest end ('host' twice)")
        if raw.frame_size % 64:
            ctx.fail(f"{key}.frame_size", "must be a multiple of 64")
        if raw.nframes * raw.frame_size >= 1 << 32:
            ctx.fail(f"{key}.nframes", "nframes x frame_size must be below 2^32")
        loopback = raw.peers[0] == raw.peers[1]
        if loopback and raw.id % 2:
            ctx.fail(f"{key}.id", "a loopback queue needs an even id (it also takes id + 1)")
        ids = (raw.id, raw.id + 1) if loopback else (raw.id,)
        for qid in ids:
            if qid in taken:
                ctx.fail(f"{key}.id", f"duplicate queue id {qid} (also ivc[{taken[qid]}])")
        for qid in ids:
            taken[qid] = i
        specs.append(IvcSpec(id=raw.id, peers=raw.peers, nframes=raw.nframes,
                             frame_size=raw.frame_size))
    return tuple(specs)


def _build_mempools(raws: tuple[_RawIvcMempool, ...], domains: tuple[DomainSpec, ...],
                    ctx: _Context) -> tuple[IvcMempoolSpec, ...]:
    names = {d.name for d in domains} | {"host"}
    taken: dict[int, int] = {}
    specs = []
    for i, raw in enumerate(raws):
        key = f"ivc_mempool[{i}]"
        _known_peers(raw.peers, names, key, ctx)
        if raw.peers[0] == raw.peers[1]:
            ctx.fail(f"{key}.peers", "a mempool is shared by two different peers")
        if raw.size % 4096:
            ctx.fail(f"{key}.size", "must be a multiple of 4096 (whole pages)")
        if raw.id in taken:
            ctx.fail(f"{key}.id", f"duplicate mempool id {raw.id} (also ivc_mempool[{taken[raw.id]}])")
        taken[raw.id] = i
        specs.append(IvcMempoolSpec(id=raw.id, peers=raw.peers, size=raw.size))
    return tuple(specs)


def _build_mgpu(raw: _RawDomainMgpu, key: str, ctx: _Context) -> DomainMgpuSpec:
    if raw.png is None:
        return DomainMgpuSpec()
    if not raw.png or "\0" in raw.png:
        ctx.fail(f"{key}.png", "must be a file name")
    p = (ctx.base / raw.png).resolve()
    if not p.parent.is_dir():
        ctx.fail(f"{key}.png", f"directory not found: {p.parent}")
    if p.is_dir():
        ctx.fail(f"{key}.png", f"is a directory: {p}")
    return DomainMgpuSpec(png=p)


def _regular_file(value: str, key: str, ctx: _Context) -> pathlib.Path:
    """*value* as an absolute, resolved path (relative to the manifest) of a regular file."""
    if not value:
        ctx.fail(key, "must not be empty")
    if "\0" in value:
        ctx.fail(key, "contains a NUL character")
    try:
        p = (ctx.base / value).resolve()
        st = p.stat()
    except FileNotFoundError:
        ctx.fail(key, f"file not found: {ctx.base / value}")
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: symlink loop on 3.11/3.12
        ctx.fail(key, f"cannot access {ctx.base / value}: {_os_reason(e)}")
    # stat.S_ISREG/S_ISDIR without importing stat
    kind = st.st_mode & 0o170000
    if kind == 0o040000:
        ctx.fail(key, f"is a directory: {p}")
    if kind != 0o100000:
        ctx.fail(key, f"not a regular file: {p}")
    return p


def _disk_size(path: pathlib.Path, key: str, ctx: _Context, prefix: str) -> None:
    """Refuse an image the lguest block device cannot describe."""
    try:
        size = path.stat().st_size
    except OSError as e:
        ctx.fail(key, f"{prefix}cannot access {path}: {_os_reason(e)}")
    if size > LGUEST_DISK_MAX_BYTES:
        ctx.fail(key, f"{prefix}{path} has {size} bytes; an lguest disk holds at most "
                 f"{LGUEST_DISK_MAX_BYTES} (num_sectors is 32 bits)")


def _input_file(p: pathlib.Path, key: str, ctx: _Context) -> pathlib.Path:
    """The --input file *p* (absolute) as a resolved regular file; errors say --input."""
    try:
        return _regular_file(str(p), key, ctx)
    except ManifestError as e:
        ctx.fail(e.key, f"--input: {e.reason}")


def _guest_args(args: tuple[str, ...], key: str, ctx: _Context) -> tuple[str, ...]:
    size = 0
    for j, arg in enumerate(args):
        if "\0" in arg:
            ctx.fail(f"{key}[{j}]", "contains a NUL character")
        try:
            size += len(arg.encode("utf-8")) + 1
        except UnicodeEncodeError:  # lone surrogates: not from TOML, but from callers' data
            ctx.fail(f"{key}[{j}]", "not encodable as UTF-8")
    if size > ARGS_MAX_BYTES:
        ctx.fail(key, f"packed size {size} bytes exceeds {ARGS_MAX_BYTES} (utf-8 + NUL per arg)")
    return args


def _os_reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


# --------------------------------------------------------------------------------------------
# msgspec.ValidationError -> ManifestError

# "<message>[ - at [`key` in ]`$<path>`]"; a path holds only our own field names and indices.
_MSG_RE = re.compile(
    r"(?P<msg>.*?)(?: - at (?P<in_key>`key` in )?`\$(?P<path>(?:\.[A-Za-z_]\w*|\[\d+\])*)`)?",
    re.S,
)
_MISSING_RE = re.compile(r"Object missing required field `(?P<name>.*)`", re.S)
_UNKNOWN_PREFIX = "Object contains unknown field `"
_UNKNOWN_RE = re.compile(r"Object contains unknown field `(?P<name>.*)`", re.S)
_TYPE_RE = re.compile(r"Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`")
_BOUND_RE = re.compile(r"Expected `[^`]*` (?P<op>[<>]=?) (?P<n>\S+)")
_LENGTH_RE = re.compile(r"Expected `[^`]*` of length (?P<op>[<>]=?) (?P<n>\S+)")
_REGEX_RE = re.compile(r"Expected `str` matching regex '(?P<rx>.*)'", re.S)
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
# msgspec names a TOML table by its JSON word
_TYPE_WORDS = {"object": "table"}


def _from_validation_error(message: str, data: Any, file: str) -> ManifestError:
    m = _MSG_RE.fullmatch(message)
    assert m is not None  # every string matches: the location part is optional
    msg, path = m["msg"], m["path"] or ""
    key = path.lstrip(".")
    if m["in_key"]:  # a table key that is not a string: only from callers' data, never TOML
        return ManifestError(file, key, "table keys must be strings")

    if message.startswith(_UNKNOWN_PREFIX):
        # The unknown key is quoted verbatim, so its own text may end like a location
        # (" - at `$.x"): believe the location only if the data agrees.
        whole = message[len(_UNKNOWN_PREFIX) : -1]
        if path and not _has_key(data, "", whole) and (unknown := _UNKNOWN_RE.fullmatch(msg)):
            if _has_key(data, path, unknown["name"]):
                return ManifestError(file, _join(key, unknown["name"]), "unknown key")
        return ManifestError(file, _join("", whole), "unknown key")
    if missing := _MISSING_RE.fullmatch(msg):
        return ManifestError(file, _join(key, missing["name"]), "missing required key")
    if typ := _TYPE_RE.fullmatch(msg):
        return ManifestError(file, key, f"expected {_type_word(typ['want'])}, got {_type_word(typ['got'])}")
    if length := _LENGTH_RE.fullmatch(msg):
        return ManifestError(file, key, f"length must be {length['op']} {length['n']}")
    if bound := _BOUND_RE.fullmatch(msg):
        return ManifestError(file, key, f"must be {bound['op']} {bound['n']}")
    if regex := _REGEX_RE.fullmatch(msg):
        return ManifestError(file, key, f"must match {regex['rx']}")
    # Anything else msgspec may say: keep its words, drop its markup.
    reason = msg.replace("`", "")
    return ManifestError(file, key, reason[:1].lower() + reason[1:])


def _type_word(name: str) -> str:
    return " | ".join(_TYPE_WORDS.get(part, part) for part in name.split(" | "))


def _join(key: str, name: str) -> str:
    """Append TOML key *name* to dotted *key*, quoted as TOML does when it is not bare."""
    if not _BARE_KEY_RE.fullmatch(name):
        name = '"' + "".join(_toml_escape(c) for c in name) + '"'
    return f"{key}.{name}" if key else name


def _toml_escape(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c < " " or c == "\x7f":
        return f"\\u{ord(c):04x}"
    return c


def _has_key(data: Any, path: str, name: str) -> bool:
    """Whether the table at msgspec *path* (e.g. ``.domain[0]``) in *data* has key *name*."""
    node = data
    for field, index in re.findall(r"\.(\w+)|\[(\d+)\]", path):
        try:
            node = node[field] if field else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(node, dict) and name in node
