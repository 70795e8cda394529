"""Options of Parsl site profiles: declared per profile, given on the command line or environment.

A profile declares its options as :class:`SiteOption` values; :func:`resolve_options` merges
``--site-option key=value`` (parsed by :func:`parse_site_options`), ``OTFPARSL_SITE_<KEY>``
environment variables and the defaults, converting each to its type. No Parsl.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otfparsl.errors import SiteError

ENV_PREFIX = "OTFPARSL_SITE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class SiteOption:
    """One option a site profile accepts.

    Parameters
    ----------
    name
        Option key, as in ``--site-option name=value`` (environment: ``OTFPARSL_SITE_NAME``).
    kind
        One of ``"str"``, ``"int"``, ``"float"``, ``"bool"``, ``"walltime"`` (``[D-]HH:MM:SS``).
    default
        Value used when the option is given neither explicitly nor by environment.
    help
        One line for ``otfparsl sites`` and the README.
    minimum
        Smallest allowed value for ``int``/``float`` options.
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: float | None = None


def _convert(site: str, option: SiteOption, raw: object, source: str) -> Any:
    """Convert one raw option value (usually a string) to the option's type."""
    where = f"site '{site}' option '{option.name}' ({source})"
    if not isinstance(raw, str):
        value: Any = raw
    elif option.kind == "str":
        return raw
    elif option.kind == "walltime":
        if not _WALLTIME.match(raw.strip()):
            raise SiteError(f"{where} must be a walltime [D-]HH:MM:SS; got {raw!r}. Example: 00:30:00")
        return raw.strip()
    elif option.kind == "bool":
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise SiteError(f"{where} must be true/false (or 1/0, yes/no); got {raw!r}")
    else:
        caster = int if option.kind == "int" else float
        try:
            value = caster(raw.strip())
        except ValueError:
            raise SiteError(f"{where} must be {option.kind}; got {raw!r}") from None
    if option.kind in ("int", "float") and option.minimum is not None and value < option.minimum:
        raise SiteError(f"{where} must be >= {option.minimum:g}; got {value!r}")
    return value


RETRIES = SiteOption(
    name="retries",
    kind="int",
    default=2,
    help="resubmissions of a task whose worker or node was lost (killed, OOM, wall time)",
    minimum=0,
)
"""The ``retries`` option every profile declares; pass it to ``Config(retries=...)``."""

def resolve_options(
    site: str, spec: Sequence[SiteOption], options: Mapping[str, object]
) -> dict[str, Any]:
    """Merge explicit options, ``OTFPARSL_SITE_*`` environment variables and defaults.

    Explicit options win over the environment, which wins over the defaults. Values are
    converted to each option's type.

    Parameters
    ----------
    site
        Profile name, used in error messages.
    spec
        The options the profile accepts.
    options
        Explicit options (strings from the CLI, or already typed values from Python).

    Returns
    -------
    dict
        One entry per option of ``spec``.

    Raises
    ------
    SiteError
        For an unknown option (with the nearest known names) or a value of the wrong type.
    """
    known = {o.name: o for o in spec}
    for key in options:
        if key not in known:
            near = difflib.get_close_matches(key, list(known), n=3)
            hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise SiteError(
                f"site '{site}' has no option '{key}'.{hint} Known options: {', '.join(sorted(known))}"
            )
    resolved: dict[str, Any] = {}
    for name, option in known.items():
        env_key = ENV_PREFIX + name.upper()
        if name in options:
            resolved[name] = _convert(site, option, options[name], "given")
        elif env_key in os.environ:
            resolved[name] = _convert(site, option, os.environ[env_key], f"from ${env_key}")
        else:
            resolved[name] = option.default
    return resolved


def parse_site_options(pairs: Sequence[str] | None) -> dict[str, str]:
    """Parse ``["key=value", ...]`` from ``--site-option`` into a dict of strings.

    Raises
    ------
    SiteError
        When an item has no ``=``, an empty key, or a key given twice.
    """
    parsed: dict[str, str] = {}
    for item in pairs or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SiteError(
                f"site option must look like key=value (e.g. account=abc123); got {item!r}"
            )
        if key in parsed:
            raise SiteError(f"site option '{key}' given twice ({parsed[key]!r} and {value!r})")
        parsed[key] = value.strip()
    return parsed
