"""template text by content hash: the prompt-template versions generate used (stairs prompts history)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:48:58
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('templatetext',
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('content_hash')
    )
    with op.batch_alter_table('templatetext', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_templatetext_name'), ['name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('templatetext', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_templatetext_name'))

    op.drop_table('templatetext')
