"""JSON Schemas of the job packages."""

JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
STATE = {"enum": ["PENDING", "STARTED", "SUCCESS", "FAILURE", "CANCELLED"]}

START = {
    "type": "object",
    "properties": {
        # the bounds keep every job under an hour (100 x 36 s) in the schema itself
        "total_steps": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "step_seconds": {"type": "number", "minimum": 0, "maximum": 36, "default": 1},
    },
    "additionalProperties": False,
}
STARTED = {"type": "object", "properties": {"job_id": JOB_ID}, "required": ["job_id"]}
JOB_REF = {
    "type": "object",
    "properties": {"job_id": JOB_ID},
    "required": ["job_id"],
    "additionalProperties": False,
}
WATCH = {
    "type": "object",
    "properties": {"job_id": JOB_ID, "since": {"type": "string", "maxLength": 100}},
    "required": ["job_id"],
    "additionalProperties": False,
}
WATCHING = {
    "type": "object",
    "properties": {"job_id": JOB_ID, "offset": {"type": "string"}},
    "required": ["job_id", "offset"],
}
STATUS = {
    "type": "object",
    "properties": {
        "job_id": JOB_ID,
        "state": STATE,
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "result": {},
        "error": {"type": ["string", "null"]},
        "total_steps": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
    "required": ["job_id", "state", "progress", "result"],
}
CANCELLED = {
    "type": "object",
    "properties": {"job_id": JOB_ID, "state": STATE},
    "required": ["job_id", "state"],
}
LIST = {"type": "object", "additionalProperties": False}
