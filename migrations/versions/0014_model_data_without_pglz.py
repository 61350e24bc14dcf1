"""a prediction's input and output: lz4 or no compression, never pglz

Both are jsonb of a few kB whenever they are worth compressing at all (TOAST tries past 2 kB):
an embedding's 384 floats, a data: URL's base64. pglz gives up on such data (it saves less
than a quarter) and stores it as it was, after spending its time: on PostgreSQL 15 here, the
outcome of a batch of embeddings cost 0.32-0.35 ms of server CPU per row with pglz, 0.19-0.22
with lz4 and 0.22-0.25 stored as is, and a read of the output 0.09-0.10 ms against 0.075.
Where the server has lz4 (built with it, as PostgreSQL's images and Debian's packages are)
these columns use it: as fast as storing them plain, and long text outputs still shrink.
Where it has not (the embedded server of `make run` and the tests), they are stored out of
line uncompressed (`STORAGE EXTERNAL`). Existing rows keep their form until rewritten.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("input", "output")
HAS_LZ4 = """
    SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'
"""


def upgrade() -> None:
    _alter(with_lz4="SET COMPRESSION lz4", without="SET STORAGE EXTERNAL")


def downgrade() -> None:
    _alter(with_lz4="SET COMPRESSION DEFAULT", without="SET STORAGE EXTENDED")


def _alter(*, with_lz4: str, without: str) -> None:
    """Metadata only, but under a table lock: behind a long transaction, fail rather than queue
    every request behind this migration."""
    op.execute("SET LOCAL lock_timeout = '10s'")
    lz4 = bool(op.get_bind().execute(text(HAS_LZ4)).scalar())
    for column in COLUMNS:
        op.execute(f"ALTER TABLE predictions ALTER COLUMN {column} {with_lz4 if lz4 else without}")
