"""The application: one module per domain, each exporting its PACKAGES."""

from handlers import system

PACKAGES = [*system.PACKAGES]
