"""The map store in a JSON file: :class:`JsonFileMapStore`, for one host.

The file holds exactly ``ShardMap.to_json()`` and is only ever replaced
whole (an fsynced temp file renamed over it, ``_write_atomically``), so
readers need no lock. Publishers serialize on an exclusive ``flock`` of a
sidecar ``PATH.lock``; with ``keep_history`` (the default) each replaced map
is archived as ``STEM.epoch-N.json``. POSIX only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from shardbill.errors import ConfigurationError, MapNotPublishedError, ShardMapError
from shardbill.mapstore.base import (
    _check_arguments,
    _check_claim_allows,
    _check_claim_swap,
    _check_publish,
    _damaged,
    _parse,
)
from shardbill.mapstore.claim import ReshardClaim
from shardbill.shardmap import ShardMap

__all__ = ["JsonFileMapStore"]


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable. Best effort: it runs after the new file is
    # already visible, so failing here must not report the publish as failed.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``target``, fsync it, and rename it over ``target``."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(fd, "wb", closefd=True) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(target.parent)


class JsonFileMapStore:
    """A :class:`MapStore` in a JSON file: ``ShardMap.to_json()``, replaced atomically.

    Readers read the file without a lock: it is only ever replaced by
    ``os.replace`` of a complete, fsynced temp file from the same directory,
    so a reader sees the old map or the new one, never a mix.

    :meth:`publish` holds an exclusive ``fcntl.flock`` on a sidecar lock file
    (``PATH.lock``, created on first publish and never deleted) from reading
    the stored epoch to the rename, so of several threads or processes
    publishing from the same epoch exactly one wins. Publishers need write
    access to the directory; readers only need to read the file.

    With ``keep_history`` (the default) a publish first archives the map it
    replaces as ``STEM.epoch-N.json`` beside the file, so every archive holds
    a map that really was current (a publish that fails before its rename
    leaves at most a fresh copy of the still-current map). :meth:`history`
    and :meth:`load_epoch` show the past epochs; to go back to one, publish
    a copy of it with a new epoch (``old.with_epoch(current.epoch + 1)``).
    Nothing is pruned: the files are small; delete old ones by hand.

    POSIX only (``fcntl``). Several hosts may share the file only on a
    filesystem whose ``flock`` works across hosts; otherwise use
    :class:`SqlMapStore`.

    Args:
        path: the map file, e.g. ``/etc/shardbill/shardmap.json``.
        keep_history: archive each replaced map as ``STEM.epoch-N.json``.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_history: bool = True) -> None:
        self._path = Path(path)
        if self._path.name in ("", ".", ".."):
            raise ConfigurationError(
                f"JsonFileMapStore needs a file path, got {os.fspath(path)!r}; "
                "e.g. /etc/shardbill/shardmap.json"
            )
        self._keep_history = keep_history
        self._history_name = re.compile(rf"{re.escape(self._path.stem)}\.epoch-([0-9]+)\.json")

    def __repr__(self) -> str:
        return f"JsonFileMapStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The map file."""
        return self._path

    @property
    def lock_path(self) -> Path:
        """The sidecar file publishers lock (``PATH.lock``)."""
        return self._path.with_name(f"{self._path.name}.lock")

    @property
    def claim_path(self) -> Path:
        """Where a reshard's claim is kept (``STEM.claim.json``), replaced like the map."""
        return self._path.with_name(f"{self._path.stem}.claim.json")

    def history_path(self, epoch: int) -> Path:
        """Where the map of ``epoch`` is archived once replaced (``STEM.epoch-N.json``)."""
        return self._path.with_name(f"{self._path.stem}.epoch-{epoch}.json")

    def _advice(self) -> str:
        return (
            f"restore a good copy (archived maps: {self._path.stem}.epoch-N.json in "
            f"{self._path.parent}) or fix the file by hand"
        )

    def _read(self, path: Path, epoch: int | None = None) -> ShardMap | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return _parse(repr(self), str(path), data, epoch, self._advice())

    def _not_published(self) -> MapNotPublishedError:
        return MapNotPublishedError(
            f"{self!r} holds no shard map yet ({self._path} does not exist); publish the first "
            "one with JsonFileMapStore(path).publish(ShardMap.create([...]), expected_epoch=None)",
            store=repr(self),
        )

    def load(self) -> ShardMap:
        """The current map (see :meth:`MapStore.load`)."""
        current = self._read(self._path)
        if current is None:
            raise self._not_published()
        return current

    def epoch(self) -> int | None:
        """The current epoch (``None`` when the file does not exist); reads only that field.

        Raises:
            ShardMapError: the file is not JSON or has no valid epoch.
        """
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            epoch = json.loads(data).get("epoch")
        except (ValueError, AttributeError) as exc:
            raise _damaged(
                repr(self), str(self._path), ShardMapError(str(exc)), self._advice()
            ) from exc
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ShardMapError(
                f"{self!r}: the shard map in {self._path} is damaged: 'epoch' must be an int "
                f">= 1: {epoch!r}; {self._advice()}"
            )
        return epoch

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl  # POSIX only; imported here so the module imports everywhere

        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def publish(self, new_map: ShardMap, *, expected_epoch: int | None) -> None:
        """Compare-and-set under the lock, then an atomic replace (see :meth:`MapStore.publish`).

        Raises:
            EpochConflictError: the stored epoch is not ``expected_epoch``, or
                ``new_map`` is not newer.
            ShardMapError: the stored file is damaged (restore it first), or
                ``new_map`` has another slot count.
            ConfigurationError: the file's directory does not exist.
        """
        _check_arguments(new_map, expected_epoch)
        if not self._path.parent.is_dir():
            raise ConfigurationError(
                f"{self!r}: directory {self._path.parent} does not exist; create it first"
            )
        data = new_map.to_json().encode()
        with self._locked():
            current = self._read(self._path)
            _check_publish(repr(self), current, new_map, expected_epoch)
            _check_claim_allows(repr(self), self.load_claim(), new_map)
            if self._keep_history and current is not None:
                _write_atomically(self.history_path(current.epoch), current.to_json().encode())
            _write_atomically(self._path, data)

    def history(self) -> tuple[int, ...]:
        """The archived epochs and the current one, oldest first."""
        current = self.epoch()
        if current is None:
            return ()
        epochs = {current}
        with os.scandir(self._path.parent) as entries:
            for entry in entries:
                match = self._history_name.fullmatch(entry.name)
                if match is not None and int(match.group(1)) < current:
                    epochs.add(int(match.group(1)))
        return tuple(sorted(epochs))

    def load_epoch(self, epoch: int) -> ShardMap:
        """The map published as ``epoch`` (the current file, or its archive).

        Raises:
            MapNotPublishedError: no map of that epoch is kept.
            ShardMapError: the archive is damaged.
        """
        current = self._read(self._path)
        if current is None:
            raise self._not_published()
        if current.epoch == epoch:
            return current
        found = self._read(self.history_path(epoch), epoch) if epoch < current.epoch else None
        if found is None:
            raise MapNotPublishedError(
                f"{self!r} keeps no map of epoch {epoch!r} (the current epoch is "
                f"{current.epoch}); history() lists the epochs it keeps",
                store=repr(self),
            )
        return found

    def load_claim(self) -> ReshardClaim | None:
        """The reshard claim in :attr:`claim_path` (``None``: no reshard ever claimed).

        Raises:
            ShardMapError: the claim file is damaged.
        """
        try:
            data = self.claim_path.read_bytes()
        except FileNotFoundError:
            return None
        return ReshardClaim.from_json(data, where=str(self.claim_path))

    def swap_claim(self, claim: ReshardClaim, *, expected_version: int | None) -> None:
        """Compare-and-set of the reshard claim under the publishers' lock, replaced atomically.

        Raises:
            ClaimConflictError: the stored claim is not at ``expected_version``.
            ConfigurationError: the file's directory does not exist.
        """
        if not self._path.parent.is_dir():
            raise ConfigurationError(
                f"{self!r}: directory {self._path.parent} does not exist; create it first"
            )
        with self._locked():
            _check_claim_swap(repr(self), self.load_claim(), claim, expected_version)
            _write_atomically(self.claim_path, claim.to_json().encode())
