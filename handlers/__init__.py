"""The application: one module per domain, each exporting its PACKAGES (and TASKS)."""

from handlers import authors, jobs, projects, system, topics

PACKAGES = [
    *authors.PACKAGES,
    *projects.PACKAGES,
    *jobs.PACKAGES,
    *topics.PACKAGES,
    *system.PACKAGES,
]
TASKS = [*jobs.TASKS]
ROUTES = [*jobs.ROUTES]
TOPICS = [*projects.TOPICS]
