"""SQLAlchemy Core tables: Alembic's target metadata and the queries' vocabulary."""

from __future__ import annotations

import sqlalchemy as sa

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING)

PROJECT_NAME_MAX = 200
PROJECT_DESCRIPTION_MAX = 2000
AUTHOR_NAME_MAX = 200
IDEMPOTENCY_KEY_MAX = 64

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("name", sa.String(PROJECT_NAME_MAX), nullable=False),
    sa.Column("description", sa.String(PROJECT_DESCRIPTION_MAX), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("is_deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    # the client's key for a create it may retry (migration 0005); NULL: none given
    sa.Column("idempotency_key", sa.String(IDEMPOTENCY_KEY_MAX), nullable=True),
    sa.CheckConstraint(
        f"length(name) >= 1 AND length(name) <= {PROJECT_NAME_MAX}", name="name_length"
    ),
    # the list query: one tenant's live rows, newest first (and by id for stable pages)
    sa.Index("ix_projects_tenant_live_id", "tenant_id", "is_deleted", "id"),
    sa.Index("uq_projects_tenant_id_idempotency_key", "tenant_id", "idempotency_key", unique=True),
)

# live and total projects per tenant, kept by triggers on `projects` (migration 0004), so
# a page's `total` is one row read instead of a count over every row of the tenant
project_counts = sa.Table(
    "project_counts",
    metadata,
    sa.Column("tenant_id", sa.String(255), primary_key=True),
    sa.Column("live", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
)

authors = sa.Table(
    "authors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(AUTHOR_NAME_MAX), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(
        f"length(name) >= 1 AND length(name) <= {AUTHOR_NAME_MAX}", name="name_length"
    ),
    sa.UniqueConstraint("name"),
)

JOB_STATES = ("PENDING", "STARTED", "SUCCESS", "FAILURE", "CANCELLED")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner_sub", sa.String(255), nullable=False),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("task", sa.String(100), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.String(500), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # resumption after a worker crash: the last recorded step, how many runs began, and
    # the lease of the run that may write (an older run still alive is fenced out)
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runner", sa.String(32), nullable=True),
    sa.CheckConstraint(
        "state IN ('PENDING', 'STARTED', 'SUCCESS', 'FAILURE', 'CANCELLED')", name="state"
    ),
    # the caller's jobs, newest first
    sa.Index("ix_jobs_owner_created", "owner_sub", "created_at"),
)

AUDIT_TARGET_MAX = 64

# who called which audited package, how and when, and how it ended (realtime.audit):
# written in batches after the operations, read by audit.list (one tenant, newest first)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("tenant_id", sa.String(255), nullable=False),
    sa.Column("sub", sa.String(255), nullable=False),
    sa.Column("package", sa.String(100), nullable=False),
    # the id the call was about (a project's id, a job's id), where it had one
    sa.Column("target", sa.String(AUDIT_TARGET_MAX), nullable=True),
    sa.Column("transport", sa.String(8), nullable=False),  # ws or rest
    sa.Column("req_id", sa.String(64), nullable=True),  # the socket request's; REST: none
    sa.Column("node", sa.String(255), nullable=False),  # host:pid of the server process
    sa.Column("outcome", sa.String(32), nullable=False),  # OK or the failure's status name
    sa.Index("ix_audit_log_tenant_at", "tenant_id", "at"),
    sa.Index("ix_audit_log_tenant_sub_at", "tenant_id", "sub", "at"),
)
