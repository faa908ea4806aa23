"""The IVC plan: areas, placement, info page bytes, RAISE_IRQ checks (no KVM)."""

import errno
import os
import struct

import pytest

from paravm.config import IvcMempoolSpec, IvcSpec
from paravm.hypercall.table import HypercallError
from paravm.services.ivc import vmm
from paravm.services.ivc.vmm import IVC_AREA_GPA, IVC_INFO_GPA, IvcService

DOMIDS = {"a": 1, "b": 2, "c": 3}


def spec(qid, a, b, nframes=4, frame_size=64):
    return IvcSpec(id=qid, peers=(a, b), nframes=nframes, frame_size=frame_size)


def test_queues_of_a_pair_share_one_area_rx_first_by_peers0(machine):
    svc = IvcService(machine, [spec(0, "a", "b"), spec(1, "b", "a", 2, 128)], DOMIDS)
    (area,) = svc.areas.values()
    q0, q1 = svc.queues
    size0 = 128 + 4 * 64
    assert (q0.offset, q0.size) == (0, size0)
    assert (q1.offset, q1.size) == (2 * size0, 128 + 2 * 128)
    assert area.size == 2 * size0 + 2 * (128 + 256)
    # peers[0] of queue 0 is a: a reads at offset, b at offset + size; queue 1: b first
    assert [(e.owner, e.rx_first) for e in q0.ends] == [("a", True), ("b", False)]
    assert [(e.owner, e.rx_first) for e in q1.ends] == [("b", True), ("a", False)]
    svc.close()


def test_each_end_gets_a_vector_and_a_doorbell_token_per_domain(machine):
    svc = IvcService(machine, [spec(0, "a", "b"), spec(1, "a", "c"), spec(2, "a", "host")],
                     DOMIDS)
    assert [(e.qid, e.irq, e.raise_irq) for e in svc.ends["a"]] == [
        (0, 0x40, 1), (1, 0x41, 2), (2, 0x42, 3)]
    assert [(e.qid, e.irq) for e in svc.ends["b"]] == [(0, 0x40)]
    # areas of a: one per peer, one after another in a's GPA space
    gpas = sorted(area.gpa["a"] for area in svc.areas.values())
    assert gpas[0] == IVC_AREA_GPA and all(g % 4096 == 0 for g in gpas)
    svc.close()


def test_loopback_is_two_entries_with_consecutive_ids_in_one_area(machine):
    svc = IvcService(machine, [spec(4, "a", "a")], DOMIDS)
    (q,) = svc.queues
    assert [(e.owner, e.qid, e.rx_first) for e in q.ends] == [("a", 4, True), ("a", 5, False)]
    assert q.ends[0].peer is q.ends[1] and q.ends[1].peer is q.ends[0]
    svc.close()


def test_info_page_layout_matches_the_reference_offsets(machine):
    svc = IvcService(machine, [spec(7, "b", "a", 8, 128), spec(9, "a", "host")], DOMIDS)
    svc.regions("a")        # allocates areas and the page
    page = svc.info_page("a")
    nr_queues, nr_areas, nr_mempools, pad = struct.unpack_from("<IIII", page, 0)
    assert (nr_queues, nr_areas, nr_mempools) == (2, 2, 0)
    areas = [struct.unpack_from("<QQIHH", page, 16 + 24 * i) for i in range(2)]
    assert {a[2] for a in areas} == {2, 0}                     # peers b (2) and host (0)
    assert all(a[0] >= IVC_AREA_GPA and a[1] % 4096 == 0 for a in areas)
    q = [struct.unpack_from("<IIIIIIIHH", page, 16 + 24 * 2 + 32 * i) for i in range(2)]
    assert q[0] == (7, 2, 1, 128 + 8 * 128, 8, 128, 0, 0x40, 1)
    assert q[1] == (9, 1, 0, 128 + 4 * 64, 4, 64, 0, 0x41, 2)
    assert len(page) == 16 + 2 * 24 + 2 * 32
    regions = svc.regions("a")
    assert regions[0][0] == IVC_INFO_GPA and regions[0][2] is True     # read-only
    assert bytes(regions[0][1].buffer[:len(page)]) == page
    svc.close()


def test_raise_irq_only_for_own_queue_towards_its_peer_and_rate_limited(machine, monkeypatch):
    svc = IvcService(machine, [spec(0, "a", "b"), spec(1, "c", "b")], DOMIDS)
    end_b = svc.ends["a"][0].peer
    end_b.eventfd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert svc._raise_irq("a", 1, 2) == 0
        assert os.eventfd_read(end_b.eventfd) == 1
        with pytest.raises(HypercallError) as e:
            svc._raise_irq("a", 1, 3)          # c is not the peer of a's queue
        assert e.value.errno == errno.EPERM
        with pytest.raises(HypercallError) as e:
            svc._raise_irq("a", 2, 2)          # a has no second queue end
        assert e.value.errno == errno.EINVAL
        # a storm: the bucket empties, then -EBUSY
        monkeypatch.setattr(vmm.time, "monotonic", lambda: 1000.0)
        end_a = svc.ends["a"][0]
        end_a.tokens, end_a.last = 3, 1000.0
        for _ in range(3):
            svc._raise_irq("a", 1, 2)
        with pytest.raises(HypercallError) as e:
            svc._raise_irq("a", 1, 2)
        assert e.value.errno == errno.EBUSY
    finally:
        os.close(end_b.eventfd)
        svc.close()


def test_too_many_queue_ends_for_the_vectors_is_refused(machine):
    specs = [spec(i, "a", "b") for i in range(vmm.IVC_VECTOR_LAST - vmm.IVC_VECTOR_BASE + 2)]
    with pytest.raises(ValueError, match="queue ends"):
        IvcService(machine, specs, DOMIDS)


def pool(pid, a, b, size=8192):
    return IvcMempoolSpec(id=pid, peers=(a, b), size=size)


def test_mempools_in_the_info_page_after_the_queues(machine):
    svc = IvcService(machine, [spec(0, "a", "b")], DOMIDS,
                     [pool(5, "a", "b"), pool(6, "host", "a", 4096), pool(7, "b", "c")])
    regions = svc.regions("a")
    page = svc.info_page("a")
    assert struct.unpack_from("<III", page, 0) == (1, 1, 2)
    base = 16 + 24 + 32
    m5 = struct.unpack_from("<QQII", page, base)
    m6 = struct.unpack_from("<QQII", page, base + 24)
    assert len(page) == base + 2 * 24
    (area,) = svc.areas.values()
    # placed after a's area, one after the other, page aligned
    assert m5 == (area.gpa["a"] + 4096, 8192, 5, 2)
    assert m6 == (m5[0] + 8192, 4096, 6, 0)
    assert [(g, r.nframes * 4096) for g, r, ro in regions[2:]] == [(m5[0], 8192), (m6[0], 4096)]
    # the host's view is the same frames
    view = svc.host_mempool(6)
    view[:5] = b"hello"
    assert bytes(regions[3][1].buffer[:5]) == b"hello"
    with pytest.raises(KeyError):
        svc.host_mempool(5)                  # the host is not a peer of pool 5
    svc.close()


def test_a_domain_with_only_a_mempool_gets_an_info_page(machine):
    svc = IvcService(machine, [], DOMIDS, [pool(1, "b", "c")])
    assert svc.regions("a") == ()
    page = svc.info_page("c")
    assert struct.unpack_from("<III", page, 0) == (0, 0, 1)
    assert struct.unpack_from("<QQII", page, 16) == (IVC_AREA_GPA, 8192, 1, 2)
    assert [g for g, _, _ in svc.regions("c")] == [IVC_INFO_GPA, IVC_AREA_GPA]
    svc.close()


class _Result:
    def __init__(self, how):
        self.how = how


class _Dom:
    def __init__(self, name, how):
        self.name, self.result = name, _Result(how)


@pytest.mark.parametrize("how, reset", [("crashed", True), ("stopped", True), ("exited", False)])
def test_a_stopped_domain_resets_its_ends_unless_it_exited(machine, how, reset):
    svc = IvcService(machine, [spec(0, "a", "host")], DOMIDS)
    svc.regions("a")
    end_a = svc.ends["a"][0]
    host_fd = svc.eventfd_of(end_a.peer)
    dom = _Dom("a", how)
    svc._domains["a"] = dom             # as attach() leaves it
    end_a.wired = True
    svc.domain_stopped(dom)
    _rx, tx = end_a.queue.channel_views(end_a)
    state = struct.unpack_from("<I", tx, 4)[0]
    assert end_a.wired is False and "a" not in svc._domains
    if reset:
        assert state == 1                                   # SYNC, as channel_reset writes
        assert os.eventfd_read(host_fd) == 1                # and the peer was rung
    else:
        assert state == 0
        with pytest.raises(BlockingIOError):
            os.eventfd_read(host_fd)
    svc.domain_stopped(dom)                                 # a second call does nothing:
    with pytest.raises(BlockingIOError):
        os.eventfd_read(host_fd)                            # no second ring
    assert struct.unpack_from("<I", tx, 4)[0] == state
    svc.close()
