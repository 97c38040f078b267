"""The application: one module per domain, each exporting its PACKAGES."""

from handlers import authors, projects, system, topics

PACKAGES = [*authors.PACKAGES, *projects.PACKAGES, *topics.PACKAGES, *system.PACKAGES]
