"""Operator commands: `python -m api.admin promote <username>` (or `demote`).

Roles are not self-service: an operator with database access grants admin (who may register
models and see every prediction). Accounts themselves are created through the API.
"""

import argparse
import sys

from db.repositories import cache_notices, users
from db.session import session_scope
from db.tables import Role


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.admin", description=__doc__)
    parser.add_argument("action", choices=["promote", "demote"], help="make admin, or user again")
    parser.add_argument("username")
    options = parser.parse_args(argv)
    role = Role.ADMIN if options.action == "promote" else Role.USER
    with session_scope() as session:
        if not users.set_role(session, username=options.username, role=role):
            print(f"no user {options.username!r}", file=sys.stderr)
            return 1
        # Running API processes drop their cached callers: the new role counts at once.
        cache_notices.announce(session, what=cache_notices.PRINCIPALS)
    print(f"{options.username} is now {role}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
