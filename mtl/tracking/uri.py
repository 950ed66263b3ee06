"""Where MLflow runs go: resolving and checking a tracking URI before anything is written."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from mtl.errors import ConfigError

_SCHEMES = "sqlite:///<path>, http:// or https://"


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI to use, made absolute.

    None means ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow's own
    default: an embedded store, no server). A relative SQLite path is made absolute against the
    current directory, because trials and resumed drivers may run elsewhere. ``file:`` URIs and
    bare paths name MLflow's file store, which MLflow 3 refuses (maintenance mode).
    """
    if uri is None or not uri.strip():
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None
    if uri is None:
        return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    uri = uri.strip()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "file" or not scheme or len(scheme) == 1:  # len 1: a Windows drive letter
        raise ConfigError(
            f"MLflow tracking URI {uri!r} names MLflow's file store, which MLflow 3 no longer "
            f"accepts (maintenance mode); use sqlite:///<absolute path>/mlflow.db or an "
            f"http(s):// tracking server")
    if scheme == "sqlite":
        path, query = _sqlite_path(uri)
        return f"sqlite:///{path}{query}"
    return uri


def _sqlite_path(uri: str) -> tuple[Path, str]:
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
        path, _ = _sqlite_path(uri)
        parent = path.parent
        if not parent.is_dir():
            raise ConfigError(f"MLflow tracking URI {uri}: directory {parent} does not exist; "
                              f"create it or point mlflow.tracking_uri elsewhere")
        # SQLite writes a journal beside the database, so the directory must be writable too.
        for target, mode in ((parent, os.W_OK | os.X_OK), (path, os.W_OK)):
            if target.exists() and not os.access(target, mode):
                raise ConfigError(f"MLflow tracking URI {uri}: {target} is not writable")
        return
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return
                reason = f"HTTP {response.status} from {url}"
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} from {url}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        raise ConfigError(
            f"MLflow tracking URI {uri} is unreachable ({reason}); start the server "
            f"(mlflow server --backend-store-uri sqlite:///<abs path>/mlflow.db --port ...) or "
            f"unset mlflow.tracking_uri / MLFLOW_TRACKING_URI to use the local sqlite store")
    raise ConfigError(f"MLflow tracking URI {uri!r}: unsupported scheme {scheme!r}; use {_SCHEMES}")
