"""What a worker environment must contain, what it does contain, and the difference.

The requirement set is the main device's versions of the cluster-critical packages as exact
pins, plus the job's own PEP 508 requirements. Versions in the target environment are read by
*running* its interpreter (``importlib.metadata`` in a subprocess), never from this process.

Local version labels (``2.13.0+cpu``, ``2.13.0+cu121``): pins use the *public* version
(``torch==2.13.0``), and by PEP 440 a public ``==`` ignores the candidate's local label. So a
``+cpu`` main device and a ``+cu121`` worker of one torch release compare as ``ok`` (CPU and CUDA
builds of one release speak the same protocol; the training preflight checks the same way), and an
install of ``torch==2.13.0`` lets the user's pip configuration (index/extra-index/find-links)
choose which build to fetch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import RequirementError
from .python_probe import run_python_json

#: Packages whose versions must match the main device's for the cluster to work.
CLUSTER_PACKAGES: tuple[str, ...] = (
    "torch", "dask", "distributed", "cloudpickle", "msgpack", "tornado",
)
#: Limits on job requirements (they may come from a peer: data, not trusted input).
MAX_REQUIREMENTS = 100
MAX_REQUIREMENT_CHARS = 300

Action = Literal["ok", "install", "upgrade", "mismatch"]


class DiffEntry(TypedDict):
    id: str
    name: str
    #: the specifier required (``==2.13.0``), ``""`` when any version will do
    required: str
    installed: str | None
    action: Action
    #: the PEP 508 string to hand to pip for this package
    requirement: str


@dataclass(frozen=True)
class InspectedEnvironment:
    python_version: str
    #: PEP 508 marker variables of the target interpreter
    markers: dict[str, str]
    #: canonical name -> installed version or ``None``
    packages: dict[str, str | None]


# --------------------------------------------------------------------------- building the set
def public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``."""
    try:
        return Version(version).public
    except InvalidVersion:
        return version.split("+", 1)[0]


def local_versions(names: Iterable[str] = CLUSTER_PACKAGES) -> dict[str, str | None]:
    """This process's versions (use on the *main* device to build the pins it sends)."""
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[canonicalize_name(name)] = md.version(name)
        except md.PackageNotFoundError:
            out[canonicalize_name(name)] = None
    return out


def cluster_pins(main_versions: Mapping[str, str | None] | None = None) -> list[Requirement]:
    """Exact pins (public versions) of :data:`CLUSTER_PACKAGES` from the main device's versions.

    Packages the main device lacks are not required; names outside the list are ignored.
    """
    versions = {canonicalize_name(k): v for k, v in
                (main_versions if main_versions is not None else local_versions()).items()}
    pins = []
    for name in CLUSTER_PACKAGES:
        version = versions.get(name)
        if not version:
            continue
        try:
            pins.append(Requirement(f"{name}=={Version(public_version(str(version)))}"))
        except (InvalidVersion, InvalidRequirement):
            raise RequirementError(f"main device reports an invalid {name} version: "
                                   f"{str(version)[:60]!r}") from None
    return pins


def parse_requirements(lines: Iterable[str]) -> list[Requirement]:
    """Validate job requirements (PEP 508). Blank lines and ``#`` comments are skipped.

    Direct references (``name @ URL``) and pip options are refused: they would bypass the user's
    pip index configuration, so they are not something a remote job may ask for.
    """
    out: list[Requirement] = []
    for raw in lines:
        line = str(raw).split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_REQUIREMENT_CHARS:
            raise RequirementError(f"requirement too long ({len(line)} characters)")
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise RequirementError(f"invalid requirement {line[:80]!r}: {exc}") from None
        if req.url:
            raise RequirementError(f"direct references are not accepted: {line[:80]!r}")
        out.append(req)
        if len(out) > MAX_REQUIREMENTS:
            raise RequirementError(f"more than {MAX_REQUIREMENTS} requirements")
    return out


def _merge(a: Requirement, b: Requirement) -> Requirement:
    merged = Requirement(str(a))
    merged.specifier = a.specifier & b.specifier
    merged.extras = set(a.extras) | set(b.extras)
    if a.marker is None or b.marker is None:
        merged.marker = None
    elif str(a.marker) != str(b.marker):
        merged.marker = Marker(f"({a.marker}) or ({b.marker})")
    return merged


def requirement_set(
    extra: Iterable[str | Requirement] = (),
    *,
    main_versions: Mapping[str, str | None] | None = None,
) -> list[Requirement]:
    """The main device's pins plus the job's requirements, one entry per package.

    A job requirement on a pinned package must admit the pinned version, otherwise
    :class:`RequirementError` (the cluster cannot have both).
    """
    pins = {canonicalize_name(r.name): r for r in cluster_pins(main_versions)}
    jobs = parse_requirements(str(r) for r in extra)
    merged: dict[str, Requirement] = dict(pins)
    for req in jobs:
        key = canonicalize_name(req.name)
        pin = pins.get(key)
        if pin is not None:
            pinned = next(iter(pin.specifier)).version
            if not req.specifier.contains(pinned, prereleases=True):
                raise RequirementError(
                    f"job requirement {str(req)!r} conflicts with the main device's "
                    f"{pin.name}=={pinned}"
                )
        if key in merged:
            _check_compatible(merged[key], req)
        merged[key] = _merge(merged[key], req) if key in merged else req
    return list(merged.values())


def _check_compatible(a: Requirement, b: Requirement) -> None:
    """Two requirements on one package that no version meets (``numpy==1.0`` and
    ``numpy==2.0``) are refused here, by name, rather than merged into ``==1.0,==2.0`` for pip
    to fail on every device. Only exact pins are decided: a general range intersection is
    pip's resolver's job."""
    for one, other in ((a, b), (b, a)):
        for spec in one.specifier:
            if spec.operator in ("==", "===") and "*" not in spec.version and \
                    not other.specifier.contains(spec.version, prereleases=True):
                raise RequirementError(
                    f"job requirements {str(a)!r} and {str(b)!r} cannot both hold"
                )


# --------------------------------------------------------------------------- the target side
_INSPECT_SCRIPT = """\
import os, platform
try:
    import importlib.metadata as md
    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
except ImportError:
    import pkg_resources
    def version(name):
        try:
            return pkg_resources.get_distribution(name).version
        except pkg_resources.DistributionNotFound:
            return None
def fmt(info):
    v = '%d.%d.%d' % (info.major, info.minor, info.micro)
    if info.releaselevel != 'final':
        v += info.releaselevel[0] + str(info.serial)
    return v
impl = getattr(sys, 'implementation', None)
markers = {
    'implementation_name': impl.name if impl else 'cpython',
    'implementation_version': fmt(impl.version) if impl else '0',
    'os_name': os.name,
    'platform_machine': platform.machine(),
    'platform_release': platform.release(),
    'platform_system': platform.system(),
    'platform_version': platform.version(),
    'python_full_version': platform.python_version(),
    'platform_python_implementation': platform.python_implementation(),
    'python_version': '.'.join(platform.python_version_tuple()[:2]),
    'sys_platform': sys.platform,
}
names = json.loads(sys.argv[1])
_answer({'python_version': platform.python_version(), 'markers': markers,
         'packages': dict((n, version(n)) for n in names)})
"""


async def inspect_environment(
    python: str, names: Iterable[str] = CLUSTER_PACKAGES, *, timeout: float = 30.0
) -> InspectedEnvironment:
    """Run ``python`` and read its installed versions of ``names`` and its marker variables.

    Raises :class:`~.errors.InterpreterError` when the interpreter cannot answer.
    """
    wanted = sorted({canonicalize_name(n) for n in names})
    data = await run_python_json(python, _INSPECT_SCRIPT, args=[json.dumps(wanted)],
                                 timeout=timeout)
    packages = data.get("packages") or {}
    return InspectedEnvironment(
        python_version=str(data.get("python_version", "")),
        markers={str(k): str(v) for k, v in (data.get("markers") or {}).items()},
        packages={n: (str(packages[n]) if packages.get(n) else None) for n in wanted},
    )


async def inspect(
    python: str, names: Iterable[str] = CLUSTER_PACKAGES, *, timeout: float = 30.0
) -> dict[str, str | None]:
    """``{canonical name: installed version or None}`` in the environment of ``python``."""
    return (await inspect_environment(python, names, timeout=timeout)).packages


# --------------------------------------------------------------------------- the diff
def _wants_newer(spec_operator: str, spec_version: str, installed: Version) -> bool:
    if spec_operator not in ("==", "===", ">=", ">", "~="):
        return False
    try:
        return Version(spec_version.removesuffix(".*")) > installed
    except InvalidVersion:
        return False


def classify(specifier: SpecifierSet, installed: str | None) -> Action:
    """``install`` (absent), ``ok`` (satisfies), ``upgrade`` (only too old) or ``mismatch``."""
    if installed is None:
        return "install"
    try:
        version = Version(installed)
    except InvalidVersion:
        return "mismatch"
    if specifier.contains(version, prereleases=True):
        return "ok"
    failing = [s for s in specifier if not s.contains(version, prereleases=True)]
    if failing and all(_wants_newer(s.operator, s.version, version) for s in failing):
        return "upgrade"
    return "mismatch"


def diff(
    required: Sequence[Requirement | str],
    installed: Mapping[str, str | None],
    *,
    markers: Mapping[str, str] | None = None,
) -> list[DiffEntry]:
    """One entry per required package, in order. ``markers`` (from
    :func:`inspect_environment`) drops requirements whose marker is false for the target; without
    them every requirement applies."""
    have = {canonicalize_name(k): v for k, v in installed.items()}
    out: list[DiffEntry] = []
    for item in required:
        req = item if isinstance(item, Requirement) else Requirement(str(item))
        if req.marker is not None and markers is not None:
            if not req.marker.evaluate({**markers, "extra": ""}):
                continue
        name = canonicalize_name(req.name)
        current = have.get(name)
        out.append({
            "id": name,
            "name": name,
            "required": str(req.specifier),
            "installed": current,
            "action": classify(req.specifier, current),
            "requirement": str(req),
        })
    return out


def pending(entries: Iterable[DiffEntry]) -> list[DiffEntry]:
    """The entries pip has to act on."""
    return [e for e in entries if e["action"] != "ok"]
