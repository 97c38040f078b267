"""realtime: a Starlette-native, WebSocket-first server."""

from realtime.packages import Context, Package, Page, Rest

__all__ = ["Context", "Package", "Page", "Rest"]
__version__ = "0.1.0"
