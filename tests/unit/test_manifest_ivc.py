"""The [[ivc]] table of the manifest."""

import pytest

from paravm.config import ManifestError, parse_manifest


@pytest.fixture
def mdir(tmp_path):
    (tmp_path / "g.elf").write_bytes(b"x")
    return tmp_path


DOMAINS = '[[domain]]\nname = "a"\nimage = "g.elf"\n\n[[domain]]\nname = "b"\nimage = "g.elf"\n\n'


def ivc(**kw):
    fields = {"id": "0", "peers": '["a", "b"]', "nframes": "16", "frame_size": "64"}
    fields.update({k: str(v) for k, v in kw.items()})
    return "[[ivc]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v != "None") + "\n"


def load(mdir, text):
    return parse_manifest(DOMAINS + text, mdir / "m.toml")


def error(mdir, text):
    with pytest.raises(ManifestError) as e:
        load(mdir, text)
    return e.value


def test_queues_between_guests_the_host_and_loopback(mdir):
    m = load(mdir, ivc() + ivc(id=1, peers='["b", "host"]', nframes=4, frame_size=4096)
             + ivc(id=2, peers='["a", "a"]'))
    assert [(q.id, q.peers, q.nframes, q.frame_size, q.loopback) for q in m.ivc] == [
        (0, ("a", "b"), 16, 64, False), (1, ("b", "host"), 4, 4096, False),
        (2, ("a", "a"), 16, 64, True)]


def test_no_ivc_tables_is_fine(mdir):
    assert load(mdir, "").ivc == ()


@pytest.mark.parametrize("kw, key, reason", [
    (dict(frame_size=100), "ivc[0].frame_size", "must be a multiple of 64"),
    (dict(frame_size=32), "ivc[0].frame_size", "must be >= 64"),
    (dict(nframes=1 << 16, frame_size=1 << 16), "ivc[0].nframes",
     "nframes x frame_size must be below 2^32"),
    (dict(nframes=0), "ivc[0].nframes", "must be >= 1"),
    (dict(peers='["a", "zed"]'), "ivc[0].peers[1]", "unknown domain 'zed'"),
    (dict(peers='["host", "host"]'), "ivc[0].peers", "a queue needs a guest end ('host' twice)"),
    (dict(peers='["a"]'), "ivc[0].peers", "expected array of length 2, got 1"),
    (dict(peers='["a", "a"]', id=3), "ivc[0].id",
     "a loopback queue needs an even id (it also takes id + 1)"),
    (dict(id=-1), "ivc[0].id", "must be >= 0"),
    (dict(nframes=None), "ivc[0].nframes", "missing required key"),
])
def test_bad_queues_name_file_key_and_reason(mdir, kw, key, reason):
    e = error(mdir, ivc(**kw))
    assert e.file == str(mdir / "m.toml")
    assert (e.key, e.reason) == (key, reason)


def test_duplicate_ids_including_the_loopback_second_id(mdir):
    e = error(mdir, ivc(id=4) + ivc(id=4, peers='["b", "a"]'))
    assert (e.key, e.reason) == ("ivc[1].id", "duplicate queue id 4 (also ivc[0])")
    e = error(mdir, ivc(id=6, peers='["a", "a"]') + ivc(id=7))
    assert (e.key, e.reason) == ("ivc[1].id", "duplicate queue id 7 (also ivc[0])")


def test_unknown_key_in_ivc(mdir):
    e = error(mdir, ivc(colour='"red"'))
    assert (e.key, e.reason) == ("ivc[0].colour", "unknown key")


def mempool(**kw):
    fields = {"id": "0", "peers": '["a", "b"]', "size": "65536"}
    fields.update({k: str(v) for k, v in kw.items()})
    return "[[ivc_mempool]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()
                                         if v != "None") + "\n"


def test_mempools_between_guests_and_with_the_host(mdir):
    m = load(mdir, mempool() + mempool(id=3, peers='["host", "b"]', size=4096))
    assert [(p.id, p.peers, p.size) for p in m.ivc_mempool] == [
        (0, ("a", "b"), 65536), (3, ("host", "b"), 4096)]
    assert load(mdir, "").ivc_mempool == ()


@pytest.mark.parametrize("kw, key, reason", [
    (dict(size=4097), "ivc_mempool[0].size", "must be a multiple of 4096 (whole pages)"),
    (dict(size=0), "ivc_mempool[0].size", "must be >= 4096"),
    (dict(size=1 << 31), "ivc_mempool[0].size", f"must be <= {1 << 30}"),
    (dict(peers='["a", "a"]'), "ivc_mempool[0].peers", "a mempool is shared by two different peers"),
    (dict(peers='["a", "nope"]'), "ivc_mempool[0].peers[1]", "unknown domain 'nope'"),
    (dict(size=None), "ivc_mempool[0].size", "missing required key"),
    (dict(colour=1), "ivc_mempool[0].colour", "unknown key"),
])
def test_bad_mempools_name_key_and_reason(mdir, kw, key, reason):
    e = error(mdir, mempool(**kw))
    assert (e.key, e.reason) == (key, reason)


def test_duplicate_mempool_ids_but_queue_ids_are_another_namespace(mdir):
    e = error(mdir, mempool(id=2) + mempool(id=2, peers='["b", "host"]'))
    assert (e.key, e.reason) == ("ivc_mempool[1].id", "duplicate mempool id 2 (also ivc_mempool[0])")
    m = load(mdir, ivc(id=2) + mempool(id=2))
    assert m.ivc[0].id == m.ivc_mempool[0].id == 2
