"""Xen event channels (2-level ABI) for guests and the host: docs/evtchn.md;
specs/grant-mpt.md part D.

:mod:`.abi` has the numbers and layouts a guest sees; :mod:`.service` the
port tables, delivery through the shared_info page, the ``event_channel_op``
hypercall and the host's :class:`~.service.EvtchnHandle`.
"""

from .service import EvtchnHandle, EvtchnService, PortStatus

__all__ = ["EvtchnHandle", "EvtchnService", "PortStatus"]
