"""daemon: placeholder until the daemon tables land

Revision ID: 0002_daemon
Revises: 0001_foundation
"""

revision = '0002_daemon'
down_revision = '0001_foundation'
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
