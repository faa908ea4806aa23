"""Manifests: the TOML file that says which domains to build -> checked, frozen objects.

Importing this package imports msgspec (~30 ms cold); the CLI imports it only when it needs it.
"""

from paravm.config.manifest import (
    ARGS_MAX_BYTES,
    DOMAIN_NAME_PATTERN,
    BlockSpec,
    ConsoleSpec,
    DomainSpec,
    HostSpec,
    INPUT_PLACEHOLDER,
    IvcMempoolSpec,
    IvcSpec,
    Manifest,
    ManifestError,
    NetSpec,
    XenSpec,
    load_manifest,
    parse_manifest,
)

__all__ = [
    "ARGS_MAX_BYTES",
    "DOMAIN_NAME_PATTERN",
    "BlockSpec",
    "ConsoleSpec",
    "DomainSpec",
    "HostSpec",
    "INPUT_PLACEHOLDER",
    "IvcMempoolSpec",
    "IvcSpec",
    "Manifest",
    "ManifestError",
    "NetSpec",
    "XenSpec",
    "load_manifest",
    "parse_manifest",
]
