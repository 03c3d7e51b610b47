"""The gRPC edge of the TokenService: servicer, metadata parsing, the error→status map, health,
reflection and process wiring."""

from authsvc.server.app import RunningServer, run, serve, start_server
from authsvc.server.config import ServeConfig
from authsvc.status import status_for

__all__ = ["RunningServer", "ServeConfig", "run", "serve", "start_server", "status_for"]
