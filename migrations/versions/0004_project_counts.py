"""project_counts: live and total projects per tenant, kept by triggers

A page of projects answers `total`; counting the tenant's rows on every page read cost
more than the rest of the request. The counts are kept by row triggers on `projects` in
the same transaction as each write (and reset by a TRUNCATE on PostgreSQL), so they can
never disagree with the rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO project_counts (tenant_id, live, total)
SELECT tenant_id, SUM(CASE WHEN is_deleted THEN 0 ELSE 1 END), COUNT(*)
FROM projects GROUP BY tenant_id
"""

POSTGRES = [
    """
    CREATE FUNCTION project_counts_add(tenant VARCHAR, deleted BOOLEAN, sign INTEGER)
    RETURNS void AS $$
      INSERT INTO project_counts (tenant_id, live, total)
      VALUES (tenant, CASE WHEN deleted THEN 0 ELSE sign END, sign)
      ON CONFLICT (tenant_id) DO UPDATE
      SET live = project_counts.live + EXCLUDED.live,
          total = project_counts.total + EXCLUDED.total
    $$ LANGUAGE sql
    """,
    """
    CREATE FUNCTION project_counts_track() RETURNS trigger AS $$
    BEGIN
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM project_counts_add(OLD.tenant_id, OLD.is_deleted, -1);
      END IF;
      IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM project_counts_add(NEW.tenant_id, NEW.is_deleted, 1);
      END IF;
      RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE FUNCTION project_counts_reset() RETURNS trigger AS $$
    BEGIN
      DELETE FROM project_counts;
      RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER projects_count AFTER INSERT OR DELETE OR UPDATE OF tenant_id, is_deleted
    ON projects FOR EACH ROW
    EXECUTE FUNCTION project_counts_track()
    """,
    """
    CREATE TRIGGER projects_count_truncate AFTER TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION project_counts_reset()
    """,
]

SQLITE = [
    """
    CREATE TRIGGER projects_count_insert AFTER INSERT ON projects BEGIN
      INSERT OR IGNORE INTO project_counts (tenant_id, live, total) VALUES (NEW.tenant_id, 0, 0);
      UPDATE project_counts SET live = live + (NOT NEW.is_deleted), total = total + 1
      WHERE tenant_id = NEW.tenant_id;
    END
    """,
    """
    CREATE TRIGGER projects_count_update AFTER UPDATE OF tenant_id, is_deleted ON projects BEGIN
      UPDATE project_counts SET live = live - (NOT OLD.is_deleted), total = total - 1
      WHERE tenant_id = OLD.tenant_id;
      INSERT OR IGNORE INTO project_counts (tenant_id, live, total) VALUES (NEW.tenant_id, 0, 0);
      UPDATE project_counts SET live = live + (NOT NEW.is_deleted), total = total + 1
      WHERE tenant_id = NEW.tenant_id;
    END
    """,
    """
    CREATE TRIGGER projects_count_delete AFTER DELETE ON projects BEGIN
      UPDATE project_counts SET live = live - (NOT OLD.is_deleted), total = total - 1
      WHERE tenant_id = OLD.tenant_id;
    END
    """,
]


def upgrade() -> None:
    op.create_table('project_counts',
    sa.Column('tenant_id', sa.String(length=255), nullable=False),
    sa.Column('live', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_project_counts'))
    )
    op.execute(BACKFILL)
    postgres = op.get_context().dialect.name == "postgresql"
    for statement in POSTGRES if postgres else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER projects_count_truncate ON projects")
        op.execute("DROP TRIGGER projects_count ON projects")
        op.execute("DROP FUNCTION project_counts_reset()")
        op.execute("DROP FUNCTION project_counts_track()")
        op.execute("DROP FUNCTION project_counts_add(VARCHAR, BOOLEAN, INTEGER)")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER projects_count_{name}")
    op.drop_table('project_counts')
