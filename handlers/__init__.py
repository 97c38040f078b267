"""The application: one module per domain, each exporting its PACKAGES (and TASKS,
ROUTES). Every module here that does not start with `_` is loaded (realtime.app
discovers them): a new domain module needs no registration."""
