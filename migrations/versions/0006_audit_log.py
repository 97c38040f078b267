"""audit_log: who called which audited package, how, when, and how it ended

Rows come from every server node in batches (realtime.audit), after the operations they
record; audit.list reads one tenant's, newest first, optionally by sub and time range.
A new table only: nothing existing is rebuilt (0004's triggers stay in place).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant_id', sa.String(length=255), nullable=False),
    sa.Column('sub', sa.String(length=255), nullable=False),
    sa.Column('package', sa.String(length=100), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=True),
    sa.Column('transport', sa.String(length=8), nullable=False),
    sa.Column('req_id', sa.String(length=64), nullable=True),
    sa.Column('node', sa.String(length=255), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_tenant_at', 'audit_log', ['tenant_id', 'at'], unique=False)
    op.create_index(
        'ix_audit_log_tenant_sub_at', 'audit_log', ['tenant_id', 'sub', 'at'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_audit_log_tenant_sub_at', table_name='audit_log')
    op.drop_index('ix_audit_log_tenant_at', table_name='audit_log')
    op.drop_table('audit_log')
