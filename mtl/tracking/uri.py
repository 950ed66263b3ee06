"""Where MLflow runs go: resolving and checking a tracking URI before anything is written."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtl.errors import ConfigError, shown

_SCHEMES = "sqlite:///<path>, http:// or https://"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use, made absolute.

    None means ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow's own
    default: an embedded store, no server). A relative SQLite path is made absolute against the
    current directory, because trials and resumed drivers may run elsewhere. ``file:`` URIs and
    bare paths name MLflow's file store, which MLflow 3 refuses (maintenance mode); a bare word that
    is no path (``databricks``) is no URI this project supports.
    """
    if uri is None or not uri.strip():
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None
    if uri is None:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    uri = uri.strip()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if not scheme and not _path_like(uri):  # a bare word, e.g. databricks: no scheme, no folder of that name
        raise ConfigError(f"MLflow tracking URI {shown(uri)} is neither a URI with a scheme nor a path; "
                          f"use {_SCHEMES}")
    if scheme == "file" or not scheme or len(scheme) == 1:  # len 1: a Windows drive letter
        raise ConfigError(
            f"MLflow tracking URI {shown(uri)} names MLflow's file store, which MLflow 3 no longer "
            f"accepts (maintenance mode); use sqlite:///<absolute path>/mlflow.db or an "
            f"http(s):// tracking server")
    if scheme == "sqlite":
        path, query = sqlite_path(uri)
        return f"sqlite:///{path}{query}"
    return uri


def _path_like(text: str) -> bool:
    """Whether scheme-less ``text`` reads as a path: it has a separator, starts with '.' or '~', or exists."""
    if "/" in text or os.sep in text or text.startswith((".", "~")):
        return True
    try:
        return Path(text).exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def sqlite_path(uri: str) -> tuple[Path, str]:
    """(absolute database path, '?query' or '') of a ``sqlite:///`` URI."""
    if not uri.lower().startswith("sqlite:///"):
        raise ConfigError(f"MLflow tracking URI {uri!r}: a SQLite URI must look like sqlite:///<path>")
    rest = uri[len("sqlite:///"):]
    rest, sep, query = rest.partition("?")
    if not rest or rest == ":memory:":
        raise ConfigError(f"MLflow tracking URI {uri!r} keeps nothing on disk; give a database file "
                          f"path, e.g. sqlite:///{Path.cwd() / 'mlflow.db'}")
    return Path(rest).expanduser().absolute(), sep + query


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before Ray starts, if runs cannot be written to ``uri``; creates nothing.

    SQLite: the database's directory must exist and be writable (MLflow creates the file).
    HTTP(S): ``GET <uri>/health`` must answer within ``timeout`` seconds.
    """
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        path, _ = sqlite_path(uri)
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"MLflow tracking URI {uri}: directory {parent} does not exist; "
                              f"create it or point mlflow.tracking_uri elsewhere")
        # SQLite writes a journal beside the database, so the directory must be writable too.
        for target, mode in ((parent, os.W_OK | os.X_OK), (path, os.W_OK)):
            if target.exists() and not os.access(target, mode):
                raise ConfigError(f"MLflow tracking URI {uri}: {target} is not writable")
        check_sqlite_store(uri, path)
        return
    if scheme in ("http", "https"):
        base = uri.rstrip("/")
        # /health is answered by the web server alone; the API call below needs its store too
        for url in (base + "/health", base + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=mtl-preflight"):
            reason = _http_problem(url, timeout)
            if reason:
                raise ConfigError(
                    f"MLflow tracking URI {uri} is unreachable ({reason}); start the server "
                    f"(mlflow server --backend-store-uri sqlite:///<abs path>/mlflow.db --port ...) or "
                    f"unset mlflow.tracking_uri / MLFLOW_TRACKING_URI to use the local sqlite store")
        return
    raise ConfigError(f"MLflow tracking URI {uri!r}: unsupported scheme {scheme!r}; use {_SCHEMES}")


def _http_problem(url: str, timeout: float) -> str | None:
    """None if ``url`` answers within ``timeout`` s with 200 (or, for the API, MLflow's own 404
    for an experiment that does not exist), else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status} from {url}"
    except urllib.error.HTTPError as e:
        if e.code == 404 and "/api/" in url and b"RESOURCE_DOES_NOT_EXIST" in e.read(4096):
            return None
        return f"HTTP {e.code} from {url}"
    except TimeoutError:
        return f"no answer from {url} within {timeout:g} s"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


_SQLITE_HEADER = b"SQLite format 3\x00"
_MLFLOW_TABLES = {"experiments", "runs", "metrics", "params", "tags"}


def check_sqlite_store(uri: str, path: Path) -> None:
    """A database file that exists must be a readable SQLite database that MLflow made (or an
    empty one); one that is a folder, is damaged or belongs to another program is refused,
    read-only, before MLflow would fail on it (or add its tables to another program's data)."""
    import sqlite3

    if path.is_dir():
        raise ConfigError(f"MLflow tracking URI {uri}: {path} is a folder, not a database file; name a file, "
                          f"e.g. sqlite:///{path / 'mlflow.db'}")
    if not path.exists() or path.stat().st_size == 0:
        return  # MLflow creates it
    fix = "move it away (MLflow then starts a new one) or point mlflow.tracking_uri at the right file"
    with path.open("rb") as f:
        if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            raise ConfigError(f"MLflow tracking URI {uri}: {path} is not a SQLite database; {fix}")
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if _MLFLOW_TABLES <= tables:
                con.execute("SELECT count(*) FROM experiments").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"MLflow tracking URI {uri}: {path} is damaged ({e}); {fix}") from None
    if tables and not _MLFLOW_TABLES <= tables:
        raise ConfigError(f"MLflow tracking URI {uri}: {path} is a SQLite database of another program (no MLflow "
                          f"tables, has {', '.join(sorted(tables)[:3])}); {fix}")


@contextmanager
def creation_lock(uri: str) -> Iterator[None]:
    """Serialise the first touch of a SQLite store (MLflow creates its tables then: two drivers
    doing it at once crash one of them) and the creation of an experiment, across processes.
    The lock file ``.<db name>.lock`` beside the database stays (removing lock files is racy).
    A full disk while a new database is made removes it again (a half-made one stops MLflow for
    good: "table ... already exists") and is :class:`~mtl.errors.DiskFull` naming it."""
    if not uri.lower().startswith("sqlite:"):
        yield
        return
    from filelock import FileLock

    from mtl.files import disk_full, disk_full_of

    db = sqlite_path(uri)[0]
    with FileLock(db.with_name(f".{db.name}.lock"), timeout=300):
        new = not db.exists() or db.stat().st_size == 0  # under the lock: nobody else is making it
        try:
            yield
        except Exception as e:
            if (full := disk_full_of(e, db)) is None:
                raise
            for made in (db, *(db.with_name(db.name + x) for x in ("-journal", "-wal", "-shm"))) if new else ():
                made.unlink(missing_ok=True)
            raise disk_full(db, full.need, quota=full.quota) from None
