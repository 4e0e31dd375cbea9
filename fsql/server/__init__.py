"""`fsql serve`: the HTTP feature and model server (ASGI: Starlette on uvicorn)."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette

from fsql.server.app import create_app, mount_root

ROOT_ENV = "FSQL_SERVE_ROOT"
BATCHING_ENV = "FSQL_SERVE_BATCHING"

__all__ = ["create_app", "factory", "mount_root", "serve"]


def factory() -> Starlette:
    """The app for ``uvicorn --factory fsql.server:factory`` (each worker process builds its own), with
    the catalog page at ``/`` (it reads the registry only, like the API)."""
    from fsql.server.catalog import catalog_app
    from fsql.store import Store

    root = os.environ.get(ROOT_ENV, ".")
    return create_app(root, batching=os.environ.get(BATCHING_ENV, "1") != "0", root_app=catalog_app(Store(root)),
                      freeze_gc=True)


def serve(root: str | Path = ".", *, host: str = "127.0.0.1", port: int = 8766, workers: int = 1,
          batching: bool = True) -> None:
    """Run the server in the foreground until interrupted."""
    import uvicorn

    from fsql.config import load_config

    settings = load_config(root).server  # fail on a bad [server] section before binding the port
    os.environ[ROOT_ENV] = str(Path(root).resolve())
    os.environ[BATCHING_ENV] = "1" if batching else "0"
    # A worker is ready once it has loaded its serving plan and models; on SIGHUP uvicorn replaces
    # workers one by one and retires an old one only when its replacement is ready, so give loading
    # the time a busy machine needs rather than abort the restart.
    uvicorn.run("fsql.server:factory", factory=True, host=host, port=port, workers=workers, loop="uvloop",
                http="fsql.server.drain:DrainingHttpToolsProtocol", log_level=settings.log_level,
                access_log=settings.access_log,
                timeout_worker_healthcheck=60)
