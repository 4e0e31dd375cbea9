"""HTTP interfaces over ``fsql.Store``: the feature server and the catalog page (``fsql.server.catalog``)."""
