"""The Python side of `cargo xtask interop`: sqlalchemy-dlock, the library dlock ports,
holding or trying a lock, so that dlock's flavours can be shown to exclude it and be
excluded by it.

    holder.py URL KEY hold   take KEY (waiting up to 30 s), print "held", wait for a line
                             on standard input, release, print "released"
    holder.py URL KEY try    try KEY once without waiting: print "acquired" (and release)
                             or "busy"

A mode ending in "-shared" (hold-shared, try-shared) takes a shared lock, and one ending in
"-xact" (hold-xact, try-xact) a transaction lock, held until the transaction ends
(PostgreSQL).

URL is a SQLAlchemy URL (postgresql+psycopg2://..., mysql+pymysql://...).
"""

import sys

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from sqlalchemy_dlock import create_sadlock


def main() -> int:
    url, key, mode = sys.argv[1:4]
    shared = mode.endswith("-shared")
    xact = mode.endswith("-xact")
    mode = mode.removesuffix("-shared").removesuffix("-xact")
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        options = {"shared": True} if shared else {"xact": True} if xact else {}
        lock = create_sadlock(conn, key, **options)
        if mode == "hold":
            if not lock.acquire(timeout=30):
                print("timed out", flush=True)
                return 1
            print("held", flush=True)
            sys.stdin.readline()
            if xact:
                # A transaction lock has no release: it ends with its transaction.
                conn.commit()
            else:
                lock.release()
            print("released", flush=True)
        elif mode == "try":
            if lock.acquire(block=False):
                print("acquired", flush=True)
                if xact:
                    conn.commit()
                else:
                    lock.release()
            else:
                print("busy", flush=True)
        else:
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
