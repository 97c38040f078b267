"""projects.idempotency_key: a retried create returns the first project

A create whose answer was lost (a timeout, a dropped socket) may have been applied; the
client retries with the same key and gets the project made the first time instead of a
duplicate. Unique per tenant; NULL (no key) never conflicts. Plain ADD COLUMN and
CREATE INDEX, no batch rebuild, so the triggers of 0004 on `projects` stay in place.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('projects', sa.Column('idempotency_key', sa.String(length=64), nullable=True))
    op.create_index(
        'uq_projects_tenant_id_idempotency_key',
        'projects',
        ['tenant_id', 'idempotency_key'],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index('uq_projects_tenant_id_idempotency_key', table_name='projects')
    op.drop_column('projects', 'idempotency_key')
