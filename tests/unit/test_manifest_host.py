"""The manifest's ``[host] program`` and the block path ``"{input}"`` (``paravm run --input``).

A host program is a file found from the manifest's directory, checked like an image; the
``--input`` file is found from the current directory, and every error about it says ``--input``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from paravm.config import (
    INPUT_PLACEHOLDER,
    BlockSpec,
    HostSpec,
    ManifestError,
    load_manifest,
    parse_manifest,
)


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """A manifest directory with a guest image, a host program, a disk and a subdirectory."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "g.elf").write_bytes(b"\x7fELF")
    (d / "host.py").write_text("def main(run):\n    return 0\n")
    (d / "disk.img").write_bytes(bytes(512))
    (d / "sub").mkdir()
    return d


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An --input file outside the manifest's directory."""
    p = tmp_path / "data.bin"
    p.write_bytes(b"payload")
    return p


def domain(name: str = "a", *devices: dict[str, str]) -> str:
    """One [[domain]] with *devices* (values are TOML source text)."""
    text = f'[[domain]]\nname = "{name}"\nimage = "g.elf"\n\n'
    for dev in devices:
        text += "[[domain.device]]\n" + "".join(f"{k} = {v}\n" for k, v in dev.items()) + "\n"
    return text


def block(path: str, **extra: str) -> dict[str, str]:
    return {"type": '"block"', "path": f'"{path}"', **extra}


def host(program: str) -> str:
    return f'[host]\nprogram = "{program}"\n'


def error(text: str, mdir: Path, **kw) -> ManifestError:
    file = str(mdir / "m.toml")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file, **kw)
    assert info.value.file == file
    return info.value


# ----------------------------------------------------------------------------------- [host]


def test_no_host_table_means_no_host_program(mdir):
    m = parse_manifest(domain(), mdir / "m.toml")
    assert m.host is None
    assert m.input is None and m.uses_input is False


def test_host_program_is_found_from_the_manifest_directory_not_the_cwd(mdir, tmp_path, monkeypatch):
    (mdir / "m.toml").write_text(domain() + host("host.py"))
    (tmp_path / "host.py").write_text("# a decoy in the cwd\n")
    monkeypatch.chdir(tmp_path)

    m = load_manifest(mdir / "m.toml")

    assert m.host == HostSpec(program=(mdir / "host.py").resolve())
    assert m.host.program.is_absolute()


def test_host_program_in_a_subdirectory_and_absolute(mdir, tmp_path):
    (mdir / "sub" / "h.py").write_text("")
    m = parse_manifest(domain() + host("sub/../sub/h.py"), mdir / "m.toml")
    assert m.host.program == (mdir / "sub" / "h.py").resolve()

    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text("")
    m = parse_manifest(domain() + host(str(elsewhere)), mdir / "m.toml")
    assert m.host.program == elsewhere.resolve()


def test_missing_host_program_names_file_key_and_path(mdir):
    e = error(domain() + host("nope.py"), mdir)
    assert (e.key, e.reason) == ("host.program", f"file not found: {mdir / 'nope.py'}")
    assert str(e) == f"{mdir / 'm.toml'}: host.program: file not found: {mdir / 'nope.py'}"


@pytest.mark.parametrize("text, key, reason", [
    pytest.param(host("sub"), "host.program", "is a directory: {mdir}/sub", id="directory"),
    pytest.param(host(""), "host.program", "must not be empty", id="empty"),
    pytest.param("[host]\nprogram = 3\n", "host.program", "expected str, got int", id="int"),
    pytest.param("[host]\nprogram = [\"host.py\"]\n", "host.program", "expected str, got array",
                 id="array"),
    pytest.param("[host]\n", "host.program", "missing required key", id="missing-key"),
    pytest.param(host("host.py") + "x = 1\n", "host.x", "unknown key", id="unknown-key"),
    pytest.param('host = "host.py"\n', "host", "expected table | null, got str", id="not-a-table"),
])
def test_bad_host_table(mdir, text, key, reason):
    e = error(text + domain(), mdir)
    assert (e.key, e.reason) == (key, reason.format(mdir=mdir))


def test_host_program_is_not_imported_by_the_manifest_check(mdir):
    (mdir / "bad.py").write_text("this is not python (\n")
    m = parse_manifest(domain() + host("bad.py"), mdir / "m.toml")
    assert m.host.program == (mdir / "bad.py").resolve()


# ---------------------------------------------------------------------------------- {input}


def test_placeholder_constant():
    assert INPUT_PLACEHOLDER == "{input}"


def test_input_placeholder_without_input_names_the_device(mdir):
    e = error(domain("a", block("disk.img"), block("{input}")), mdir)
    assert e.key == "domain[0].device[1].path"
    assert "{input}" in e.reason and "--input" in e.reason and "none was given" in e.reason


def test_input_placeholder_in_a_later_domain_names_that_domain(mdir):
    e = error(domain("a", block("disk.img")) + domain("b", {"type": '"console"'}, block("{input}")),
              mdir)
    assert e.key == "domain[1].device[1].path"


def test_input_placeholder_takes_the_input_file(mdir, data):
    m = parse_manifest(domain("a", block("{input}", readonly="true")), mdir / "m.toml", input=data)

    assert m.domains[0].devices == (BlockSpec(path=data.resolve(), readonly=True, input=True),)
    assert m.input == data.resolve()
    assert m.uses_input is True


def test_ordinary_block_path_is_not_input(mdir, data):
    m = parse_manifest(domain("a", block("disk.img"), block("{input}")), mdir / "m.toml",
                       input=data)
    assert m.domains[0].devices == (BlockSpec(path=(mdir / "disk.img").resolve()),
                                    BlockSpec(path=data.resolve(), input=True))
    assert m.domains[0].devices[0].input is False


def test_relative_input_is_taken_from_the_cwd_not_the_manifest_directory(mdir, tmp_path,
                                                                        monkeypatch):
    (mdir / "in.bin").write_bytes(b"decoy next to the manifest")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "in.bin").write_bytes(b"the one")
    monkeypatch.chdir(cwd)
    (mdir / "m.toml").write_text(domain("a", block("{input}")))

    m = load_manifest(mdir / "m.toml", input="in.bin")

    assert m.input == (cwd / "in.bin").resolve()
    assert m.domains[0].devices[0].path == (cwd / "in.bin").resolve()


def test_input_through_a_symlink_is_resolved(mdir, data, tmp_path):
    link = tmp_path / "link.bin"
    link.symlink_to(data)
    m = parse_manifest(domain("a", block("{input}")), mdir / "m.toml", input=link)
    assert m.input == data.resolve()
    assert m.domains[0].devices[0].path == data.resolve()


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda t: t / "missing.bin", "--input: file not found: {p}", id="missing"),
    pytest.param(lambda t: t, "--input: is a directory: {p}", id="directory"),
])
def test_bad_input_for_a_placeholder_names_the_device_and_says_input(mdir, tmp_path, make, reason):
    p = make(tmp_path)
    e = error(domain("a", block("{input}")), mdir, input=p)
    assert (e.key, e.reason) == ("domain[0].device[0].path", reason.format(p=p))


def test_input_to_a_manifest_without_placeholder_is_still_checked(mdir, data):
    m = parse_manifest(domain("a", block("disk.img")) + host("host.py"), mdir / "m.toml",
                       input=data)
    assert m.input == data.resolve()
    assert m.uses_input is False
    assert m.domains[0].devices == (BlockSpec(path=(mdir / "disk.img").resolve()),)


@pytest.mark.parametrize("make, reason", [
    pytest.param(lambda t: t / "missing.bin", "--input: file not found: {p}", id="missing"),
    pytest.param(lambda t: t, "--input: is a directory: {p}", id="directory"),
])
def test_bad_input_without_placeholder_is_a_file_level_error(mdir, tmp_path, make, reason):
    p = make(tmp_path)
    e = error(domain(), mdir, input=p)
    assert (e.key, e.reason) == ("", reason.format(p=p))
    assert str(e) == f"{mdir / 'm.toml'}: {reason.format(p=p)}"


@pytest.mark.parametrize("path", ["{input}.bin", " {input}", "{INPUT}", "{input}/", "input"])
def test_only_the_exact_placeholder_stands_for_the_input(mdir, data, path):
    e = error(domain("a", block(path)), mdir, input=data)
    assert e.key == "domain[0].device[0].path"
    assert e.reason == f"file not found: {mdir / path}"   # not "--input: ..."



def test_placeholder_like_name_is_an_ordinary_relative_path(mdir, data):
    (mdir / "{input}.bin").write_bytes(b"a real file with a curly name")
    m = parse_manifest(domain("a", block("{input}.bin")), mdir / "m.toml", input=data)
    assert m.domains[0].devices == (BlockSpec(path=(mdir / "{input}.bin").resolve()),)
    assert m.uses_input is False
    assert m.input == data.resolve()   # checked anyway: --input was given


def test_placeholder_in_two_domains_gives_both_the_file(mdir, data):
    text = (domain("a", block("{input}")) +
            domain("b", {"type": '"console"'}, block("disk.img"), block("{input}", readonly="true")))
    m = parse_manifest(text, mdir / "m.toml", input=data)

    assert m.domain("a").devices == (BlockSpec(path=data.resolve(), input=True),)
    assert m.domain("b").devices[1:] == (BlockSpec(path=(mdir / "disk.img").resolve()),
                                         BlockSpec(path=data.resolve(), readonly=True, input=True))
    assert m.input == data.resolve() and m.uses_input is True


@pytest.mark.parametrize("size, ok", [(0xFFFFFFFF * 512, True), (0xFFFFFFFF * 512 + 1, False)])
def test_a_disk_beyond_lguests_32_bit_sector_count_is_refused(tmp_path, size, ok):
    """num_sectors is a u32: 2 TiB - 512 B is the largest disk (sparse files here)."""
    from paravm.config import ManifestError, load_manifest
    disk = tmp_path / "big.img"
    with open(disk, "wb") as f:
        f.truncate(size)
    elf = tmp_path / "g.elf"
    elf.write_bytes(b"\x7fELF")
    for path, given in (("big.img", None), ("{input}", disk)):
        (tmp_path / "m.toml").write_text(
            f'[[domain]]\nname = "a"\nimage = "g.elf"\n[[domain.device]]\ntype = "block"\n'
            f'path = "{path}"\n')
        if ok:
            m = load_manifest(tmp_path / "m.toml", input=given)
            assert m.domains[0].devices[0].path == disk
        else:
            with pytest.raises(ManifestError) as e:
                load_manifest(tmp_path / "m.toml", input=given)
            assert e.value.key == "domain[0].device[0].path"
            assert e.value.reason.startswith("--input: " if given else str(disk))
            assert "at most 2199023255040" in e.value.reason
