"""Istio release versions: how they are spelled and which ones setup-mesh supports.

A version is Istio's release tag: X.Y.Z, or a prerelease X.Y.Z-alpha.N / -beta.N / -rc.N (the tags on
https://github.com/istio/istio/releases). The supported minors are the ones setup-mesh's behaviour was
checked against (the root bundles istiod takes, the Gateway API CRDs, istioctl's tables differ between
them); 1.28 and 1.29 are past Istio's end of life but still accepted, so that a mesh on them can be
pinned where it is and moved forward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

VERSION_PATTERN = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta|rc)\.(\d+))?")
SUPPORTED_MINORS = ((1, 28), (1, 29), (1, 30), (1, 31))
# Minors Istio no longer supports (docs/releases/supported-releases; 1.29's end of life was 2026-10-15).
# 1.28's date is not recorded here: it ended before 1.29's.
END_OF_LIFE = {(1, 28): None, (1, 29): "2026-10-15"}
EXAMPLE = "1.30.3"


@dataclass(frozen=True, order=True)
class IstioVersion:
    major: int
    minor: int
    patch: int
    # Prereleases sort before the release: ("", n) for alpha/beta/rc by name, ("~",) for a release.
    pre: tuple = ("~", 0)

    @property
    def minor_key(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def revision(self) -> str:
        """Istio's revision name for this version (dots are not allowed in revisions): 1.31.0 -> 1-31-0."""
        return str(self).replace(".", "-")

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        return text if self.pre[0] == "~" else f"{text}-{self.pre[0]}.{self.pre[1]}"


def parse_version(text: str) -> IstioVersion | None:
    """The version ``text`` spells, or None when it is not an Istio version."""
    match = VERSION_PATTERN.fullmatch(text or "") if isinstance(text, str) else None
    if not match:
        return None
    major, minor, patch, stage, number = match.groups()
    pre = (stage, int(number)) if stage else ("~", 0)
    return IstioVersion(int(major), int(minor), int(patch), pre)


def supported_range() -> str:
    first, last = SUPPORTED_MINORS[0], SUPPORTED_MINORS[-1]
    return f"{first[0]}.{first[1]}.0 to {last[0]}.{last[1]}.x"


def version_problem(value: object) -> tuple[str, str] | None:
    """Why ``value`` (as read from YAML or a flag) cannot be a pinned Istio version, and how to fix it;
    None when it can."""
    if isinstance(value, float):
        # YAML reads `1.30` as the number 1.3: say so, as the user wrote something else.
        return (f"{value!r} is a number, not an Istio version",
                f"write the full release, X.Y.Z, e.g. istio_version: {EXAMPLE}")
    if not isinstance(value, str):
        return (f"{value!r} is not an Istio version", f"write the release as X.Y.Z, e.g. istio_version: {EXAMPLE}")
    parsed = parse_version(value.strip())
    if parsed is None:
        return (f"{value!r} is not an Istio version",
                f"write the release as X.Y.Z (or X.Y.Z-rc.N for a prerelease), e.g. {EXAMPLE}, without a leading 'v'")
    if parsed.minor_key not in SUPPORTED_MINORS:
        return (f"Istio {value} is outside the range setup-mesh supports ({supported_range()})",
                f"pin a release from {supported_range()}, e.g. {EXAMPLE}")
    return None


def end_of_life_note(version: str) -> str | None:
    """A note for a pinned version whose minor Istio no longer supports, else None."""
    parsed = parse_version(version)
    if parsed is None or parsed.minor_key not in END_OF_LIFE:
        return None
    when = END_OF_LIFE[parsed.minor_key]
    return (f"Istio {parsed.major}.{parsed.minor} reached its end of life{f' on {when}' if when else ''} and "
            f"gets no more security fixes: move the mesh to a release Istio still supports")
