"""Parsl orchestration: site profiles, tasks and the on-the-fly driver.

This is the only package of otfparsl that imports parsl.
"""

from otfparsl.workflow.site import (
    ROLES,
    RoleReport,
    Site,
    SiteOption,
    build_config,
    check_site,
    format_report,
    load_site,
    open_site,
    parse_site_options,
    resolve_options,
    roles,
)

__all__ = [
    "ROLES",
    "RoleReport",
    "Site",
    "SiteOption",
    "build_config",
    "check_site",
    "format_report",
    "load_site",
    "open_site",
    "parse_site_options",
    "resolve_options",
    "roles",
]
