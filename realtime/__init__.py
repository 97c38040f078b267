"""realtime: a Starlette-native, WebSocket-first server.

This module is the handler API: what a module of `handlers/` imports (with
`realtime.exceptions`), and nothing else of the framework (docs/architecture.md).
"""

__version__ = "0.1.0"  # first: modules imported below read it

from realtime.audit import AuditRow, AuditStore
from realtime.bus import Offset
from realtime.db import Prepared, contains, now, translate, utc
from realtime.jobs.steps import StepJobs, job_topic
from realtime.jobs.stream import job_stream
from realtime.packages import Context, Package, Page, Rest
from realtime.rest import RestOnlyRoute
from realtime.topics import Topic
from realtime.types import JSONObject

__all__ = ["Context", "Package", "Page", "Rest", "RestOnlyRoute", "Topic"]
# the SQL helpers of handlers/*_sql.py (realtime.db)
__all__ += ["Prepared", "contains", "now", "translate", "utc"]
# what a job type and the jobs packages use (realtime.jobs.steps, realtime.jobs.stream)
__all__ += ["JSONObject", "Offset", "StepJobs", "job_stream", "job_topic"]
# the audit log's store (a handler module's AUDIT, realtime.audit)
__all__ += ["AuditRow", "AuditStore"]
