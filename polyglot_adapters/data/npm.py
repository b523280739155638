"""Data tarballs from the npm registry: fetched once with ``npm pack`` at install time, checked, cached."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import PolyglotAdaptersError

__all__ = ["npm_tarball"]


def npm_tarball(
    package: str,
    version: str,
    integrity: str,
    directory: Path,
    *,
    error: type[PolyglotAdaptersError],
    fetch_command: str,
    download: bool = True,
) -> Path:
    """Returns the verified tarball of ``package@version`` in ``directory``, fetching it if needed and allowed.

    The download lands in a temporary directory beside the target and is checked before it is
    renamed into place, so the cache holds a verified tarball or none.

    Args:
        package: Unscoped npm package name.
        version: Exact version.
        integrity: The registry's ``dist.integrity`` (``sha512-<base64>``).
        directory: Cache directory (created if missing).
        error: Library error class to raise.
        fetch_command: The command that fetches it, named in error messages.
        download: Whether a missing tarball may be fetched (the only use of the network).

    Returns:
        ``directory / f"{package}-{version}.tgz"``.

    Raises:
        error: If the tarball is missing and ``download`` is false, npm is missing or fails, or
            the tarball does not match ``integrity``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{package}-{version}.tgz"
    target = directory / name
    spec = f"{package}@{version}"
    if not target.exists():
        if not download:
            raise error(f"{target}: missing; run `{fetch_command}` (the install step does) to download it with npm")
        npm = shutil.which("npm")
        if npm is None:
            raise error(
                f"npm is not installed, so {spec} cannot be fetched; install Node.js and npm "
                f"(e.g. apt-get install npm) and run `{fetch_command}`"
            )
        print(f"fetching {spec} with npm pack into {directory}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            done = subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp, "--silent"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0 or not (Path(tmp) / name).exists():
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise error(
                    f"`npm pack {spec}` failed ({last}); check that the npm registry is reachable "
                    f"(proxy, `npm config get registry`) and run `{fetch_command}` again"
                )
            _verify(Path(tmp) / name, spec, integrity, error)
            (Path(tmp) / name).replace(target)
    _verify(target, spec, integrity, error)
    return target


def _verify(path: Path, spec: str, integrity: str, error: type[PolyglotAdaptersError]) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != integrity:
        raise error(f"{path}: checksum does not match {spec}; delete the file and fetch again")
