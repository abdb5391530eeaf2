"""Folders written whole by a run that may be stopped or killed: FolderLock (an flock held while a run writes a
folder, taken over with a line from a dead run) and OutputFolder (a staging folder beside the output, swapped in at
the end; a stop, an error or a crash leaves the previous output as it was). No torch."""

import contextlib
import fcntl
import fnmatch
import glob
import os
import shutil
import socket
import sys
from pathlib import Path

from cli import InputError, ScriptError, StopSignal, WriteError, check_writable


class FolderLock:
    """An exclusive lock (flock) on the file `path`, held while a run that writes `folder` lives. The kernel releases
    it when the process dies, so a killed run's lock is taken over with a line; a live run's is an InputError
    naming `flag`."""

    def __init__(self, path: Path, folder: Path, what: str, flag: str):
        self.path, self.folder, self.what, self.flag, self.file = Path(path), Path(folder), what, flag, None

    def holder(self) -> str | None:
        """Who holds the lock ('' when unsaid), None when nobody does; writes nothing."""
        with contextlib.suppress(OSError), open(self.path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return f.read().strip()
        return None

    def check(self) -> "FolderLock":
        """Refuse a folder held by a live run, before anything is written."""
        owner = self.holder()
        if owner is not None:
            raise self.in_use(owner)
        return self

    def locked(self):
        """Called once the lock is taken, before it is announced (a subclass's last check)."""

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a+")  # noqa: SIM115 (held open for the run's lifetime)
        except OSError as err:
            raise WriteError(self.path, err) from None
        try:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.seek(0)
                raise self.in_use(self.file.read()) from None
            self.file.seek(0)
            previous = self.file.read().strip()
            self.locked()
            self.file.truncate(0)
            self.file.write(f"pid {os.getpid()} on {socket.gethostname()}")
            self.file.flush()
        except BaseException as err:
            self.file.close()
            if isinstance(err, OSError) and not isinstance(err, ScriptError):
                raise WriteError(self.path, err) from None
            raise
        if previous:
            print(f"Taking over {self.path} left by a run that ended without releasing it ({previous})",
                  file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(OSError):
            self.file.truncate(0)
        self.file.close()

    def in_use(self, owner: str) -> InputError:
        return InputError(f"{self.folder} is in use by {self.what} ({owner.strip() or 'another process'}); wait "
                          f"for it to end or choose another {self.flag}")


class OutputFolder:
    """An output folder that is whole or absent. A run writes into a staging folder beside it
    (`.<name>.<pid>.staging`), holding `.<name>.lock` beside it, and `commit` swaps it in (the previous folder moved
    to `.<name>.<pid>.old`, the new one renamed into place, the old one removed). A stop, an error or a crash
    leaves the previous folder as it was; the next run removes what a killed one left (or, killed between the
    two renames, puts its previous folder back), with a line. `patterns` name what the folder may hold, the first
    what it always holds: any other folder (not empty) is never replaced."""

    def __init__(self, target, flag: str, what: str, patterns: tuple[str, ...], stop: StopSignal | None = None):
        self.target, self.flag, self.patterns, self.stop = Path(os.path.abspath(target)), flag, patterns, stop
        self.lock = FolderLock(self.beside("lock"), self.target, f"a running {what}", flag)
        self.staging, self.old = self.beside(f"{os.getpid()}.staging"), self.beside(f"{os.getpid()}.old")

    def beside(self, suffix: str) -> Path:
        return self.target.parent / f".{self.target.name}.{suffix}"

    def check(self) -> "OutputFolder":
        """Before anything is written: InputError for a folder that cannot be written, holds files of something
        else, or is in use by a live run."""
        if not self.target.name or (self.target.exists() and not self.target.is_dir()):
            raise InputError(f"{self.flag} {self.target} must name a folder of its own, not a file or a root")
        check_writable(self.flag, self.target.parent)
        names = sorted(p.name for p in self.target.iterdir()) if self.target.is_dir() else []
        foreign = [n for n in names if not any(fnmatch.fnmatch(n, pattern) for pattern in self.patterns)]
        if foreign or (names and not fnmatch.filter(names, self.patterns[0])):
            reason = f"it holds {', '.join(foreign[:3])}" if foreign else f"it holds no {self.patterns[0]}"
            raise InputError(f"{self.target} is not this script's output ({reason}), so it is not replaced; choose "
                             f"another {self.flag} or move it away")
        self.lock.check()
        return self

    def __enter__(self) -> Path:
        """Take the lock, clear a killed run's leftovers and make the staging folder; returns it."""
        self.lock.__enter__()
        try:
            for old in self.target.parent.glob(f".{glob.escape(self.target.name)}.*.old"):
                if self.target.exists():
                    shutil.rmtree(old)
                else:
                    os.replace(old, self.target)
                    print(f"Put back {self.target} from {old.name}, left by a run killed while it swapped "
                          "its output in", file=sys.stderr, flush=True)
            for leftover in self.target.parent.glob(f".{glob.escape(self.target.name)}.*.staging"):
                shutil.rmtree(leftover)
                print(f"Removed {leftover}, left by a run that did not finish", file=sys.stderr, flush=True)
            self.staging.mkdir()
        except BaseException as err:
            self.lock.__exit__()
            if isinstance(err, OSError) and not isinstance(err, ScriptError):
                raise WriteError(err.filename or self.staging, err) from None
            raise
        return self.staging

    def unfinished(self) -> str | None:
        """Why the folder cannot be trusted yet, in words (a live run writes it, a dead one left its staging folder
        beside it, or died while swapping it in), for a reader of it; None when none of these."""
        owner, pattern = self.lock.holder(), f".{glob.escape(self.target.name)}.*"
        if owner is not None:
            return f"{self.target} is being written by {self.lock.what} ({owner or 'pid unknown'}); wait for it to end"
        staging, old = (sorted(self.target.parent.glob(pattern + end)) for end in (".staging", ".old"))
        if staging:
            return (f"{staging[0]} was left by a run that did not finish, so {self.target} is not the latest output; "
                    "run that command again (it clears this), or delete the leftover to use the older output")
        if old and not self.target.exists():
            return f"{old[0]} holds {self.target}, left by a run killed while it swapped it in; run that command again"
        return None

    def commit(self):
        """Swap the staging folder in. From here on a stop signal only records (the output is whole)."""
        if self.stop is not None:
            self.stop.discard = None
        if self.target.exists():
            os.replace(self.target, self.old)
        os.replace(self.staging, self.target)
        shutil.rmtree(self.old, ignore_errors=True)

    def __exit__(self, kind, err, tb):
        """Remove the staging folder (unless committed) and put the previous folder back if the swap was cut short;
        an OSError becomes WriteError (exit 74), or an InputError when it came from reading an input."""
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self.old.exists():
                if self.target.exists():
                    shutil.rmtree(self.old, ignore_errors=True)
                else:
                    os.replace(self.old, self.target)
        finally:
            self.lock.__exit__()
        if isinstance(err, OSError) and not isinstance(err, ScriptError):
            path = os.path.abspath(err.filename) if err.filename else str(self.staging.absolute())
            if not any(path.startswith(str(p.absolute())) for p in (self.staging, self.target, self.old)):
                raise InputError(f"cannot read {path} ({err.strerror or err}); did it change while this ran?") \
                    from None
            raise WriteError(path, err) from None
        return False
