"""The application: one module per domain, each exporting its PACKAGES."""

from handlers import authors, projects, system

PACKAGES = [*authors.PACKAGES, *projects.PACKAGES, *system.PACKAGES]
