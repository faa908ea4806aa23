"""The on-disk cache of checked ELF facts (paravm.loader.cache)."""

import json
import os
import shutil

import pytest

from paravm.loader import ImageError, cache, read_image
from paravm.loader.elf import parse_elf

RAM = 16 << 20


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("PARAVM_CACHE_DIR", str(d))
    return d


@pytest.fixture
def image(hello_elf, tmp_path):
    p = tmp_path / "hello.elf"
    shutil.copy(hello_elf, p)
    return p


def _entry(cache_dir, image):
    return cache_dir / (cache.digest(image.read_bytes()) + ".json")


def test_a_miss_parses_and_stores_a_hit_skips_pyelftools(cache_dir, image, monkeypatch):
    first = read_image(image, RAM, 1)
    entry = _entry(cache_dir, image)
    assert entry.exists()
    assert json.loads(entry.read_text())["entry"] == first.entry

    def boom(*a):
        raise AssertionError("parsed again despite a cache entry")
    monkeypatch.setattr("paravm.loader.elf.parse_elf", boom)
    again = read_image(image, RAM, 1)
    assert again == first


def test_placement_is_checked_on_every_load_even_from_the_cache(cache_dir, image):
    read_image(image, RAM, 1)
    with pytest.raises(ImageError, match="outside guest RAM"):
        read_image(image, 1 << 20 | 1 << 19, 4)   # 1.5 MiB, 4 stacks: no room


def test_a_changed_file_is_a_different_entry(cache_dir, image):
    read_image(image, RAM, 1)
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF          # in the section headers' tail: still a valid ELF
    image.write_bytes(bytes(data))
    read_image(image, RAM, 1)
    assert len(list(cache_dir.glob("*.json"))) == 2


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"version": 1}',
                                     b'{"version": 99, "sha256": "x"}'])
def test_a_corrupt_entry_is_a_miss(cache_dir, image, garbage):
    expected = parse_elf(str(image), image.read_bytes())
    cache_dir.mkdir()
    _entry(cache_dir, image).write_bytes(garbage)
    assert read_image(image, RAM, 1).entry == expected.entry
    # ... and is replaced by a good one
    assert json.loads(_entry(cache_dir, image).read_text())["entry"] == expected.entry


def test_a_forged_entry_for_another_digest_is_refused(cache_dir, image):
    read_image(image, RAM, 1)
    entry = _entry(cache_dir, image)
    raw = json.loads(entry.read_text())
    raw["sha256"] = "0" * 64
    entry.write_text(json.dumps(raw))
    assert cache.load(cache.digest(image.read_bytes())) is None


def test_an_unwritable_cache_is_skipped(tmp_path, image, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PARAVM_CACHE_DIR", str(blocker / "sub"))
    assert read_image(image, RAM, 1).vectors is not None


def test_empty_setting_disables_the_cache(monkeypatch, image, tmp_path):
    monkeypatch.setenv("PARAVM_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    read_image(image, RAM, 1)
    assert not (tmp_path / "xdg").exists()


def test_refusals_are_not_cached(cache_dir, tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(ImageError):
        read_image(bad, RAM, 1)
    assert not cache_dir.exists() or not list(cache_dir.glob("*.json"))
    assert os.path.exists(bad)


@pytest.mark.parametrize("field, value", [
    ("gpa", 0x1000),          # over the page tables
    ("offset", 1 << 40),      # beyond the file
    ("filesz", 1 << 30),      # more than memsz
    ("filesz", -1),           # negative
])
def test_a_tampered_entry_is_reparsed_not_trusted(cache_dir, image, field, value):
    good = read_image(image, RAM, 1)
    entry = _entry(cache_dir, image)
    raw = json.loads(entry.read_text())
    col = {"gpa": 1, "offset": 2, "filesz": 3}[field]
    raw["segments"][0][col] = value
    entry.write_text(json.dumps(raw))
    again = read_image(image, RAM, 1)
    assert again == good
    assert json.loads(entry.read_text())["segments"][0][col] != value   # rewritten


def test_a_tampered_entry_point_is_reparsed(cache_dir, image):
    good = read_image(image, RAM, 1)
    entry = _entry(cache_dir, image)
    raw = json.loads(entry.read_text())
    raw["entry"] = 0x5000
    entry.write_text(json.dumps(raw))
    assert read_image(image, RAM, 1).entry == good.entry
