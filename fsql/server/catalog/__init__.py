"""The catalog page: server-rendered HTML over ``fsql.Store`` (registry reads only, never the warehouse).

``catalog_app(store)`` is a self-contained Starlette app; ``fsql serve`` mounts it at ``/`` and ``fsql ui``
serves it alone. Jinja autoescaping is on for every template, so names, descriptions and SQL from feature
files always render as text. No JavaScript, fonts or stylesheets from anywhere else: the CSS and SVG are
hand-written and inline.
"""

from fsql.server.catalog.app import catalog_app

__all__ = ["catalog_app"]
