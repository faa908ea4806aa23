"""paravm.Hypervisor: create, start, wait for and destroy domains.

It sits above every layer (it composes the VM layer, devices and, later, the
services), so it is a top-level module rather than part of ``paravm.vm``.

The hypervisor owns /dev/kvm, the machine memory and every domain; as a
context manager it releases all of them (fds, mappings, memslots, threads).
It is the Python API the CLI, tests and scripts use::

    with Hypervisor() as hv:
        d = hv.create_domain("hello", "examples/hello/hello.elf", memory_mib=64)
        hv.start_all()
        print(d.wait().describe())
"""

from __future__ import annotations

import os
import re
import threading
import time

from . import limits
from .arch.x86 import layout as L
from .loader import read_image
from .memory import MachineMemory
from .vm.console import Sink, stdout_sink
from .vm.domain import Domain, DomainResult

_UNSET = object()
_NAME = re.compile(limits.DOMAIN_NAME_PATTERN[1:-1])


class Hypervisor:
    """*output*: ``fn(domain_name, line)`` for console lines (default: stdout
    with a ``name|`` prefix; ``None`` to only capture).  *timing*: measure time
    per exit reason (for ``--stats``).  *pin_vcpus*: pin each vCPU thread to one
    host CPU, round robin over the CPUs this process may use
    (``bench/exit_roundtrip`` measures pinned against unpinned exits in one
    run: 0.91x in most runs here, but 1.20x in a noisy one)."""

    def __init__(self, *, output: Sink | None = _UNSET, kvm_path: str = "/dev/kvm",
                 timing: bool = False, pin_vcpus: bool = True) -> None:
        from .vm.kvm_backend import install_kick_handler, open_kvm
        install_kick_handler()
        self.kvm = open_kvm(kvm_path)
        self.machine = MachineMemory()
        self.output = stdout_sink if output is _UNSET else output
        self.timing = timing
        self.domains: dict[str, Domain] = {}
        self._next_domid = 1
        self._cpus = sorted(os.sched_getaffinity(0)) if pin_vcpus else []
        self._next_cpu = 0
        self._images: dict[tuple, object] = {}
        self._params: dict[str, dict] = {}     # create_domain arguments, for restart
        self._cond = threading.Condition()
        self._closed = False
        self._loop = None
        self.ivc = None          # paravm.services.ivc.vmm.IvcService, with IVC queues
        self.lguest = None       # paravm.services.lguest.service.LguestService, with devices
        self.grant = None        # paravm.services.grant.service.GrantService, with [domain.xen]
        self.evtchn = None       # paravm.services.evtchn.service.EvtchnService, with [domain.xen]
        self.xenstore = None     # paravm.services.xenstore.XenStore, with [domain.xen]
        self.pvz = None          # paravm.services.pvz.service.PvzService, with [pvz]
        self._mpt = None         # paravm.services.mpt.MptService, made on first use
        self.mgpus: dict = {}    # domain name -> paravm.devices.mgpu.Mgpu, with [domain.mgpu]
        self._base_regions: dict[str, tuple] = {}   # a manifest domain's IVC and lguest regions

    @property
    def loop(self):
        """The event-loop thread for host-side fds and timers
        (:class:`paravm.vm.eventloop.EventLoop`), made on first use."""
        if self._closed:
            raise RuntimeError("hypervisor is closed")
        if self._loop is None:
            from .vm.eventloop import EventLoop
            self._loop = EventLoop()
        return self._loop

    @property
    def mpt(self):
        """The mediated pass-through services (:class:`paravm.services.mpt.MptService`)
        that device models use, made on first use (docs/mpt.md)."""
        if self._closed:
            raise RuntimeError("hypervisor is closed")
        if self._mpt is None:
            from .services.mpt import MptService
            self._mpt = MptService(self.machine)
        return self._mpt

    # --- domains -----------------------------------------------------------------
    def create_domain(self, name: str, image: str | os.PathLike, *, memory_mib: int = 64,
                      vcpus: int = 1, args: tuple[str, ...] | list[str] = (),
                      domid: int | None = None, regions: tuple = ()) -> Domain:
        """Load *image* into a new domain (not started).  *regions*: extra
        ``(gpa, FrameRange, readonly)`` to map before the vCPUs exist (see
        :meth:`Domain.map_frames`).  Raises
        :class:`paravm.loader.ImageError` for a bad image, ``ValueError`` for bad
        parameters, ``OSError``/``KvmError`` if the kernel refuses."""
        from .vm.kvm_backend import KvmVm
        if self._closed:
            raise RuntimeError("hypervisor is closed")
        if not _NAME.fullmatch(name):
            raise ValueError(f"domain name {name!r} must match {_NAME.pattern}")
        if name in self.domains:
            raise ValueError(f"a domain named {name!r} exists")
        args = tuple(args)
        if any("\0" in a for a in args):
            raise ValueError("an argument contains a NUL character")
        if domid is not None:
            if not 1 <= domid < 0x7FF0:
                raise ValueError(f"domid {domid} outside 1..0x7fef (0 is the host)")
            if any(d.domid == domid for d in self.domains.values()):
                raise ValueError(f"domid {domid} is taken")
        if not limits.VCPUS_MIN <= vcpus <= limits.VCPUS_MAX:
            raise ValueError(f"vcpus must be {limits.VCPUS_MIN}..{limits.VCPUS_MAX}, "
                             f"got {vcpus}")
        memory_bytes = memory_mib << 20
        if not limits.MEMORY_MIB_MIN <= memory_mib <= limits.MEMORY_MIB_MAX:
            raise ValueError(f"memory must be {limits.MEMORY_MIB_MIN}..{limits.MEMORY_MIB_MAX}"
                             f" MiB, got {memory_mib}")
        if L.stacks_bottom(memory_bytes, vcpus) <= L.RESERVED_END:
            raise ValueError(f"{memory_mib} MiB is too small for {vcpus} vCPU stacks")
        img = self._image(image, memory_bytes, vcpus)
        if domid is None:
            taken = {d.domid for d in self.domains.values()}
            domid = self._next_domid
            while domid in taken:
                domid += 1
        self._next_domid = max(self._next_domid, domid + 1)
        cpus = None
        if self._cpus:
            cpus = [self._cpus[(self._next_cpu + i) % len(self._cpus)] for i in range(vcpus)]
            self._next_cpu = (self._next_cpu + vcpus) % len(self._cpus)
        vm = KvmVm(self.kvm)
        try:
            dom = Domain(name=name, domid=domid, image=img, memory_bytes=memory_bytes,
                         nr_vcpus=vcpus, args=tuple(args), vm=vm, machine=self.machine,
                         sink=self.output, timing=self.timing, on_stop=self._domain_stopped,
                         cpus=cpus, regions=regions, on_start=self._domain_starting)
        except BaseException:
            vm.close()
            raise
        self._add_devices(dom)
        self.domains[name] = dom
        self._params[name] = dict(image=image, memory_mib=memory_mib, vcpus=vcpus, args=args,
                                  domid=domid, regions=regions)
        return dom

    def _add_devices(self, dom: Domain) -> None:
        """The devices every domain has."""
        from .devices.debugcon import DEBUGCON_PORT, DebugCon
        dom.pio_bus.insert(DEBUGCON_PORT, 1, DebugCon(dom.console), "debugcon")

    def _image(self, path, memory_bytes: int, vcpus: int):
        """Read (or reuse) a checked image.  This in-process cache spares a
        repeated create the file read, hash and on-disk cache lookup of
        :func:`read_image`; its key includes the file's identity and mtime, so
        a rebuilt image is read again."""
        try:
            st = os.stat(path)
            key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size,
                   memory_bytes, vcpus)
        except OSError:
            key = None
        img = self._images.get(key) if key else None
        if img is None:
            img = read_image(path, memory_bytes, vcpus)
            if key:
                if len(self._images) >= 64:
                    self._images.clear()
                self._images[key] = img
        return img

    def create_from_manifest(self, manifest, *, pvz_device=None) -> list[Domain]:
        """Every domain of a :class:`paravm.config.Manifest`, with its IVC
        queues (shared areas mapped, info pages, doorbells wired), lguest
        devices, Xen services and PVZ connection.  *pvz_device*:
        ``fn(PvzService) -> PvzSystem``, the host driver's system layer behind
        the PVZ server (default: the example GPU, docs/pvz.md)."""
        if manifest.ivc or manifest.ivc_mempool:
            from .services.ivc.vmm import IvcService
            self.ivc = IvcService(self.machine, manifest.ivc,
                                  {d.name: d.domid for d in manifest.domains},
                                  manifest.ivc_mempool)
        if any(spec.devices for spec in manifest.domains):
            from .services.lguest.service import LguestService
            self.lguest = LguestService(self.machine, manifest.domains,
                                        loop_factory=lambda: self.loop)
        if any(spec.xen is not None for spec in manifest.domains):
            from .services.evtchn.service import EvtchnService
            from .services.grant.service import GrantService
            self.evtchn = EvtchnService(self.machine, manifest.domains)
            from .services.xenstore import XenStore
            self.grant = GrantService(self.machine, manifest.domains, evtchn=self.evtchn)
            self.xenstore = XenStore(manifest.domains)
        if manifest.pvz is not None:
            from .services.pvz.service import PvzService
            if pvz_device is None:
                from .devices.pvzgpu import PvzGpu
                pvz_device = PvzGpu.for_service
            self.pvz = PvzService(self.machine, manifest.pvz, manifest.domains,
                                  device=pvz_device)
        if any(spec.mgpu is not None for spec in manifest.domains):
            from .devices.mgpu import MgpuType
            self.mgpus = MgpuType.for_manifest(self.mpt, manifest.domains)
        made = []
        for spec in manifest.domains:
            regions = self.ivc.regions(spec.name) if self.ivc else ()
            if self.lguest:
                regions += self.lguest.regions(spec.name)
            if self.pvz:
                regions += self.pvz.regions(spec.name)
            self._base_regions[spec.name] = regions
            dom = self.create_from_spec(spec, regions + self._instance_regions(spec.name))
            self._attach_services(dom)
            made.append(dom)
        return made

    def _instance_regions(self, name: str) -> tuple:
        """Regions asked for again for each instance of a domain: its grant
        table and grant windows are new, its shared_info page is the same
        frame zeroed at attach (a restarted domain must not see the state of
        the one before)."""
        regions = ()
        for svc in (self.evtchn, self.grant):
            if svc is not None:
                regions += svc.regions(name)
        return regions

    def _services(self) -> tuple:
        return tuple(s for s in (self.ivc, self.lguest, self.evtchn, self.grant, self.xenstore,
                                 self.pvz, self._mpt) if s is not None)

    def _attach_services(self, dom: Domain) -> None:
        for svc in self._services():
            svc.attach(dom)

    def create_from_spec(self, spec, regions: tuple = ()) -> Domain:
        """From a :class:`paravm.config.DomainSpec` (*regions* as :meth:`create_domain`)."""
        return self.create_domain(spec.name, spec.image, memory_mib=spec.memory_mib,
                                  vcpus=spec.vcpus, args=spec.args, domid=spec.domid,
                                  regions=regions)

    def start_all(self) -> None:
        """Start every domain not started or stopped yet."""
        for d in self.domains.values():
            if d.t_start_ns is None and not d.stopped:
                d.start()

    def restart(self, name: str, *, args: tuple[str, ...] | list[str] | None = None,
                start: bool = True) -> Domain:
        """Destroy the stopped domain *name* and build it again from the same
        image and parameters (same domid, same IVC areas, queues and
        mempools, doorbells rewired; new *args* if given), started unless
        *start* is False.  ``RuntimeError`` if it is still running;
        ``KeyError`` if unknown."""
        old = self.domains[name]
        if not old.stopped:
            raise RuntimeError(f"domain {name} is running; stop it before a restart")
        params = dict(self._params[name])
        if args is not None:
            params["args"] = tuple(args)
        self.destroy(name)
        if name in self._base_regions:
            params["regions"] = self._base_regions[name] + self._instance_regions(name)
        dom = self.create_domain(name, **params)
        self._attach_services(dom)
        if start:
            dom.start()
        return dom

    def _domain_starting(self, domain: Domain) -> None:
        for svc in self._services():
            starting = getattr(svc, "domain_starting", None)
            if starting is None:
                continue
            try:
                starting(domain)
            except Exception as e:  # noqa: BLE001 - a start goes on; the service says why
                domain.console.write(f"[paravm] start-up of {type(svc).__name__} failed: "
                                     f"{e}\n".encode())

    def _domain_stopped(self, domain: Domain) -> None:
        # Mediated devices and PVZ first: the device models and the firmware
        # let go of a dying guest's memory at once.  Grants next: a dying
        # domain's mappings go before its event channels close (an unmap
        # notification may still be sent).
        for svc in (self._mpt, self.pvz, self.grant, self.ivc, self.lguest, self.evtchn,
                    self.xenstore):
            if svc is None:
                continue
            try:
                svc.domain_stopped(domain)
            except Exception as e:  # noqa: BLE001 - a stop must always be reported
                domain.console.write(f"[paravm] clean-up of {type(svc).__name__} failed: "
                                     f"{e}\n".encode())
                domain.console.flush()
        with self._cond:
            self._cond.notify_all()

    def wait_all(self, timeout: float | None = None) -> dict[str, DomainResult] | None:
        """Wait until every domain has stopped; results by name, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not all(d.stopped for d in self.domains.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left if left is None or left < 0.5 else 0.5)
        return {name: d.wait() for name, d in self.domains.items()}

    def stop_all(self, reason: str = "") -> None:
        """Ask every running domain to stop (returns at once; see :meth:`wait_all`)."""
        for d in self.domains.values():
            if not d.stopped:
                d.stop(reason)

    def destroy(self, domain: Domain | str) -> None:
        """Stop and release one domain (see :meth:`Domain.destroy`); it is
        forgotten only once released, so a failed destroy can be retried."""
        name = domain if isinstance(domain, str) else domain.name
        self.domains[name].destroy()
        del self.domains[name]

    def close(self) -> None:
        """Destroy every domain, then release the machine memory and /dev/kvm.
        ``RuntimeError`` listing what could not be released."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for name in list(self.domains):
            try:
                self.destroy(name)
            except Exception as e:  # noqa: BLE001 - close the rest regardless
                errors.append(str(e))
        if self._loop is not None:
            self._loop.close()
        for svc in (self._mpt, self.pvz, self.ivc, self.lguest, self.grant, self.evtchn,
                    self.xenstore):
            if svc is not None:
                svc.close()
        self.machine.close()
        self.kvm.close()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> "Hypervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
