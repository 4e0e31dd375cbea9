"""An HTTP protocol that drains keep-alive connections when a worker stops, rather than cutting them.

On a graceful shutdown (SIGTERM, and SIGHUP in a multi-worker server, which replaces each worker) uvicorn
closes idle keep-alive connections at once. A client that has just sent its next request on such a
connection sees it reset: a failed request. Here an idle connection stays open a little longer; a request
arriving on it is served as usual, answered with ``Connection: close``, so the client moves to a live
worker; a connection still idle at the end of the grace period is closed.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Long enough for a client under load to send its next request, short enough not to hold up a stop.
DRAIN_S = 1.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    _draining = False

    def shutdown(self) -> None:
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(DRAIN_S, self.timeout_keep_alive_handler)
        else:
            self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._draining and not self.transport.is_closing() and not self.pipeline:
            # Served during the drain: the response said Connection: close; nothing more may come.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(DRAIN_S, self.timeout_keep_alive_handler)
