"""The manifest loader: valid files give frozen specs; every bad file names the file, key and reason."""

from __future__ import annotations

import datetime
import math
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paravm.config import (
    ARGS_MAX_BYTES,
    DomainSpec,
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
)


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    """A manifest directory holding two guest images and a subdirectory."""
    (tmp_path / "alice.elf").write_bytes(b"\x7fELF")
    (tmp_path / "bob.elf").write_bytes(b"\x7fELF")
    (tmp_path / "sub").mkdir()
    return tmp_path


def domain(name: str = "alice", image: str = "alice.elf", **extra: str) -> str:
    """One [[domain]] table; *extra* values are TOML source text."""
    lines = ["[[domain]]", f'name = "{name}"', f'image = "{image}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def error(text: str, mdir: Path) -> ManifestError:
    file = str(mdir / "m.toml")
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file)
    assert info.value.file == file
    return info.value


# ---------------------------------------------------------------------------------- valid files


def test_two_domains_get_defaults_domids_and_images_relative_to_the_manifest(mdir, monkeypatch):
    (mdir / "m.toml").write_text(domain("alice") + domain("bob", "bob.elf", memory="128", vcpus="2", args='["-v", "x"]'))
    monkeypatch.chdir("/")  # images are found from the manifest's directory, not the cwd

    m = load_manifest(mdir / "m.toml")

    assert m.path == mdir / "m.toml"
    assert m.domains == (
        DomainSpec("alice", 1, (mdir / "alice.elf").resolve(), 64, 1, ()),
        DomainSpec("bob", 2, (mdir / "bob.elf").resolve(), 128, 2, ("-v", "x")),
    )
    assert m.domain("bob").memory_bytes == 128 * 1024 * 1024
    with pytest.raises(KeyError):
        m.domain("carol")


def test_specs_are_frozen(mdir):
    m = parse_manifest(domain(), mdir / "m.toml")
    with pytest.raises(AttributeError):
        m.domains[0].memory_mib = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        m.domains = ()  # type: ignore[misc]


def test_image_may_be_absolute_and_is_resolved_through_symlinks(mdir):
    (mdir / "link.elf").symlink_to(mdir / "alice.elf")
    m = parse_manifest(domain(image=str(mdir / "sub" / ".." / "link.elf")), mdir / "m.toml")
    assert m.domains[0].image == (mdir / "alice.elf").resolve()
    assert m.domains[0].image.is_absolute()


def test_limits_are_inclusive(mdir):
    lo = parse_manifest(domain(memory="2", vcpus="1"), mdir / "m.toml").domains[0]
    hi = parse_manifest(domain(memory="3072", vcpus="32"), mdir / "m.toml").domains[0]
    assert (lo.memory_mib, lo.vcpus, hi.memory_mib, hi.vcpus) == (2, 1, 3072, 32)


def test_args_may_pack_to_exactly_the_limit(mdir):
    # 1023 bytes + NUL, twice = 2048
    args = ["x" * 1023, "é" * 511 + "y"]
    text = domain(args="[" + ", ".join(f'"{a}"' for a in args) + "]")
    assert parse_manifest(text, mdir / "m.toml").domains[0].args == tuple(args)


def test_package_reexports_the_manifest_module():
    import paravm.config.manifest as mod

    for name in ("DomainSpec", "Manifest", "ManifestError", "load_manifest", "parse_manifest"):
        assert getattr(mod, name) is globals()[name]


# ---------------------------------------------------------------------------------- the error


def test_error_str_names_file_key_and_reason():
    assert str(ManifestError("m.toml", "domain[1].memory", "must be >= 2")) == "m.toml: domain[1].memory: must be >= 2"
    assert str(ManifestError("m.toml", "", "file not found: /x")) == "m.toml: file not found: /x"


def test_error_survives_pickling():
    e = pickle.loads(pickle.dumps(ManifestError("m.toml", "domain", "unknown key")))
    assert (e.file, e.key, e.reason) == ("m.toml", "domain", "unknown key")


# ---------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, key, reason",
    [
        pytest.param('[[domain]]\nimage = "alice.elf"\n', "domain[0].name", "missing required key", id="missing-name"),
        pytest.param('[[domain]]\nname = "alice"\n', "domain[0].image", "missing required key", id="missing-image"),
        pytest.param(domain(memory='"64"'), "domain[0].memory", "expected int, got str", id="str-for-int"),
        pytest.param(domain(memory="64.0"), "domain[0].memory", "expected int, got float", id="float-for-int"),
        pytest.param(domain(vcpus="true"), "domain[0].vcpus", "expected int, got bool", id="bool-for-int"),
        pytest.param(domain(memory="false"), "domain[0].memory", "expected int, got bool", id="bool-for-memory"),
        pytest.param('[[domain]]\nname = 7\nimage = "a"\n', "domain[0].name", "expected str, got int", id="int-for-str"),
        pytest.param(domain(args='"-v"'), "domain[0].args", "expected array, got str", id="str-for-args"),
        pytest.param(domain(args='["a", 1]'), "domain[0].args[1]", "expected str, got int", id="int-in-args"),
        pytest.param("domain = 1\n", "domain", "expected array, got int", id="domain-not-array"),
        pytest.param("[domain]\n", "domain", "expected array, got table", id="domain-table-not-array"),
        pytest.param("domain = [1]\n", "domain[0]", "expected table, got int", id="domain-entry-not-table"),
        pytest.param(domain() + "foo = 1\n", "domain[0].foo", "unknown key", id="unknown-in-domain"),
        pytest.param("foo = 1\n" + domain(), "foo", "unknown key", id="unknown-top-level"),
        pytest.param("[mpt]\n", "mpt", "unknown key", id="unknown-table"),
        pytest.param(domain() + "pvz = { osid = 1 }\n", "domain[0].pvz", "a PVZ guest needs the [pvz] table", id="pvz-guest-without-pvz"),
        pytest.param("[pvz]\norigin = \"both\"\n" + domain(), "pvz.origin", "must be \"guest\" or \"host\", got 'both'", id="pvz-origin"),
        pytest.param("[pvz]\nfw_heap_size = 65537\n" + domain(), "pvz.fw_heap_size", "must be a multiple of 4096", id="pvz-heap-unaligned"),
        pytest.param("[pvz]\nfw_heap_size = 16777216\n" + domain(), "pvz.fw_heap_size", "must be <= 8388608", id="pvz-heap-too-big"),
        pytest.param("[pvz]\n" + domain("a") + "pvz = { osid = 0 }\n", "domain[0].pvz.osid", "must be >= 1", id="pvz-osid-host"),
        pytest.param("[pvz]\n" + domain("a") + "pvz = { osid = 2 }\n" + domain("b") + "pvz = { osid = 2 }\n", "domain[1].pvz.osid", "OSID 2 is taken by domain[0]", id="pvz-osid-twice"),
        pytest.param("[pvz]\n" + domain("a") + "pvz = { osid = 2, priority = 1073741824 }\n", "domain[0].pvz.priority", "must be <= 1073741823", id="pvz-priority"),
        pytest.param(domain() + '"a.b" = 1\n', 'domain[0]."a.b"', "unknown key", id="unknown-key-quoted"),
        pytest.param(domain("alice") + domain("alice"), "domain[1].name", "duplicate domain name 'alice' (also domain[0])", id="duplicate"),
        pytest.param(domain("host"), "domain[0].name", "'host' is reserved (the host is domain 0)", id="reserved"),
        pytest.param(domain("Alice"), "domain[0].name", "must match ^[a-z][a-z0-9_-]{0,31}$", id="uppercase"),
        pytest.param(domain("1a"), "domain[0].name", "must match ^[a-z][a-z0-9_-]{0,31}$", id="leading-digit"),
        pytest.param(domain(""), "domain[0].name", "must match ^[a-z][a-z0-9_-]{0,31}$", id="empty-name"),
        pytest.param(domain("a" * 33), "domain[0].name", "must match ^[a-z][a-z0-9_-]{0,31}$", id="name-33-chars"),
        pytest.param(domain("alice\\n"), "domain[0].name", "must match ^[a-z][a-z0-9_-]{0,31}$", id="trailing-newline"),
        pytest.param(domain(memory="1"), "domain[0].memory", "must be >= 2", id="memory-low"),
        pytest.param(domain(memory="3073"), "domain[0].memory", "must be <= 3072", id="memory-high"),
        pytest.param(domain(memory="-1"), "domain[0].memory", "must be >= 2", id="memory-negative"),
        pytest.param(domain(memory=str(2**70)), "domain[0].memory", "must be <= 3072", id="memory-huge"),
        pytest.param(domain(vcpus="0"), "domain[0].vcpus", "must be >= 1", id="vcpus-low"),
        pytest.param(domain(vcpus="33"), "domain[0].vcpus", "must be <= 32", id="vcpus-high"),
        pytest.param(domain(args='["ok", "a\\u0000b"]'), "domain[0].args[1]", "contains a NUL character", id="args-nul"),
        pytest.param(
            domain(args=f'["{"x" * 1023}", "{"y" * 1023}", ""]'),
            "domain[0].args",
            "packed size 2049 bytes exceeds 2048 (utf-8 + NUL per arg)",
            id="args-too-large",
        ),
        pytest.param(
            domain(args=f'["{"é" * 1024}"]'),
            "domain[0].args",
            "packed size 2049 bytes exceeds 2048 (utf-8 + NUL per arg)",
            id="args-counted-in-utf8-bytes",
        ),
        pytest.param(domain(image="sub"), "domain[0].image", "is a directory: {mdir}/sub", id="image-directory"),
        pytest.param(domain(image=""), "domain[0].image", "must not be empty", id="image-empty"),
        pytest.param(domain(image="a\\u0000b"), "domain[0].image", "contains a NUL character", id="image-nul"),
        pytest.param(domain(image="/dev/null"), "domain[0].image", "not a regular file: /dev/null", id="image-device"),
        pytest.param("", "domain", "at least one [[domain]] table is required", id="empty-file"),
        pytest.param("# only a comment\n", "domain", "at least one [[domain]] table is required", id="comment-only"),
        pytest.param("domain = []\n", "domain", "at least one [[domain]] table is required", id="empty-array"),
    ],
)
def test_bad_manifest_names_file_key_and_reason(mdir, text, key, reason):
    e = error(text, mdir)
    assert (e.key, e.reason) == (key, reason.replace("{mdir}", str(mdir)))
    assert str(e) == (f"{mdir / 'm.toml'}: {key}: {e.reason}" if key
                      else f"{mdir / 'm.toml'}: {e.reason}")


@pytest.mark.parametrize(
    "text, where",
    [
        pytest.param("[[domain]\n", "(at line 1, column 9)", id="unclosed-header"),
        pytest.param(domain() + 'name = "x"\n', "(at line 4, column 11)", id="duplicate-key"),
        pytest.param('[[domain]]\nname = "alice\n', "(at line 2, column 14)", id="unterminated-string"),
    ],
)
def test_toml_syntax_error_keeps_tomllib_line_and_column(mdir, text, where):
    # tomllib's wording differs between Python versions; its location does not.
    e = error(text, mdir)
    assert e.key == ""
    assert e.reason.startswith("TOML syntax error: ") and e.reason.endswith(where)


def test_missing_image_names_the_absolute_path(mdir):
    e = error(domain("alice") + domain("bob", "nope/bob.elf"), mdir)
    assert (e.key, e.reason) == ("domain[1].image", f"file not found: {mdir}/nope/bob.elf")


def test_first_error_in_file_order_wins(mdir):
    e = error(domain("alice", memory="1") + domain("bob", memory="2", vcpus="99"), mdir)
    assert e.key == "domain[0].memory"


def test_errors_name_the_file_as_given(mdir, monkeypatch):
    monkeypatch.chdir(mdir)
    with pytest.raises(ManifestError) as info:
        parse_manifest(domain(memory="1"), "m.toml")
    assert str(info.value) == "m.toml: domain[0].memory: must be >= 2"


def test_missing_manifest_file(mdir):
    with pytest.raises(ManifestError) as info:
        load_manifest(mdir / "absent.toml")
    e = info.value
    assert (e.file, e.key, e.reason) == (str(mdir / "absent.toml"), "", f"file not found: {mdir}/absent.toml")


def test_manifest_path_is_a_directory(mdir):
    with pytest.raises(ManifestError) as info:
        load_manifest(mdir / "sub")
    assert (info.value.key, info.value.reason) == ("", f"is a directory: {mdir}/sub")


def test_manifest_not_utf8(mdir):
    (mdir / "m.toml").write_bytes(b'[[domain]]\nname = "\xff"\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(mdir / "m.toml")
    assert (info.value.key, info.value.reason) == ("", "not valid UTF-8 (byte offset 19)")


def test_deeply_nested_toml_is_a_syntax_error(mdir):
    e = error("a = " + "[" * 5000 + "]" * 5000 + "\n", mdir)
    assert (e.key, e.reason) == ("", "TOML syntax error: values nested too deeply")


@pytest.mark.parametrize(
    "key",
    ["x - at `$.domain", "x` - at `$.domain[0]", "we`ird", "line\nbreak", ""],
)
def test_unknown_keys_with_odd_text_are_reported_whole_and_quoted(mdir, key):
    escaped = key.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    for text, where in [(f'"{escaped}" = 1\n' + domain(), ""), (domain() + f'"{escaped}" = 1\n', "domain[0].")]:
        e = error(text, mdir)
        quoted = '"' + key.replace("\n", "\\u000a") + '"'
        assert (e.key, e.reason) == (where + quoted, "unknown key")


# ---------------------------------------------------------------------------------- fuzzing


def _toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _toml_document(d: dict) -> str:
    return "".join(f"{_toml_str(k)} = {_toml_value(v)}\n" for k, v in d.items())


_KEYS = st.sampled_from(["domain", "name", "image", "memory", "vcpus", "args", "foo"]) | st.text(max_size=8)
_SCALARS = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=-3, max_value=40)
    | st.booleans()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["alice", "bob", "host", "alice.elf", "sub", "missing.elf", "/dev/null", ""])
    | st.dates()
    | st.times()
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=20,
)
_NAMES = st.sampled_from(["alice", "bob", "c-3_po", "host", "Bad", ""])
_IMAGES = st.sampled_from(["alice.elf", "bob.elf", "./sub/../bob.elf", "sub", "missing.elf", "/dev/null", ""])
# Mostly well-formed domains, so that the checks after the schema are reached too.
_GOOD_DOMAINS = st.fixed_dictionaries(
    {"name": _NAMES, "image": _IMAGES},
    optional={
        "memory": st.integers(min_value=0, max_value=20000),
        "vcpus": st.integers(min_value=0, max_value=40),
        "args": st.lists(st.text(max_size=700), max_size=5),
    },
)
_ANY_DOMAINS = st.fixed_dictionaries(
    {},
    optional={
        "name": _NAMES | _SCALARS,
        "image": _IMAGES | _SCALARS,
        "memory": _SCALARS,
        "vcpus": _SCALARS,
        "args": st.lists(_SCALARS, max_size=4) | _VALUES,
        "foo": _VALUES,
    },
)
_DOCUMENTS = (
    st.fixed_dictionaries({"domain": st.lists(_GOOD_DOMAINS, max_size=4)})
    | st.fixed_dictionaries({"domain": st.lists(_GOOD_DOMAINS | _ANY_DOMAINS, max_size=3)}, optional={"foo": _VALUES})
    | st.dictionaries(_KEYS, _VALUES, max_size=4)
)


def _manifest_or_error(text: str, file: str) -> Manifest | ManifestError:
    try:
        return parse_manifest(text, file)
    except ManifestError as e:
        assert e.file == file and isinstance(e.key, str) and e.reason
        return e


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "alice.elf").write_bytes(b"")
    (d / "bob.elf").write_bytes(b"")
    (d / "sub").mkdir()
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text())
def test_any_text_gives_a_manifest_or_a_manifest_error(fuzz_dir, text):
    _manifest_or_error(text, str(fuzz_dir / "m.toml"))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_DOCUMENTS)
def test_any_toml_document_gives_a_manifest_or_a_manifest_error(fuzz_dir, doc):
    result = _manifest_or_error(_toml_document(doc), str(fuzz_dir / "m.toml"))
    if isinstance(result, Manifest):
        assert [d.domid for d in result.domains] == list(range(1, len(result.domains) + 1))
        assert all(d.image.is_file() and sum(len(a.encode()) + 1 for a in d.args) <= ARGS_MAX_BYTES for d in result.domains)
