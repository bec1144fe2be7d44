"""The demo: ``python -m loadercache``.

A GraphQL-shaped request (posts, each post's author and comments, each
comment's author) over an in-memory SQLite database, resolved twice: naively,
one query per field, and through DataLoaders.  It prints how many queries each
way made; nothing outside the standard library is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from loadercache import DataLoader

__all__ = ["Database", "DemoResult", "main", "run_demo"]


class Database:
    """An in-memory SQLite database of users, posts and comments that counts queries.

    >>> db = Database(posts=3, comments_per_post=2)
    >>> db.query("SELECT count(*) FROM posts")
    [(3,)]
    """

    def __init__(
        self, posts: int = 20, comments_per_post: int = 5, users: int = 100
    ) -> None:
        self.queries: int = 0
        self.connection: sqlite3.Connection = sqlite3.connect(":memory:")
        self.connection.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
            CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL,
                                title TEXT NOT NULL);
            CREATE TABLE comments (id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL,
                                   author_id INTEGER NOT NULL, body TEXT NOT NULL);
            """
        )
        self.connection.executemany(
            "INSERT INTO users VALUES (?, ?)",
            [(i, f"user {i}") for i in range(1, users + 1)],
        )
        self.connection.executemany(
            "INSERT INTO posts VALUES (?, ?, ?)",
            [(i, 1 + i % users, f"post {i}") for i in range(1, posts + 1)],
        )
        self.connection.executemany(
            "INSERT INTO comments VALUES (?, ?, ?, ?)",
            [
                (n, post, 1 + (post + c) % users, f"comment {c} on post {post}")
                for n, (post, c) in enumerate(
                    (
                        (p, c)
                        for p in range(1, posts + 1)
                        for c in range(comments_per_post)
                    ),
                    start=1,
                )
            ],
        )

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[Any]:
        """Run one query and count it."""
        self.queries += 1
        return self.connection.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


def _placeholders(keys: Sequence[int]) -> str:
    return ", ".join("?" * len(keys))


class Naive:
    """Resolvers as written without a DataLoader: one query per field."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def user(self, user_id: int) -> Optional[str]:
        """The name of one user: one query."""
        rows = self.db.query("SELECT name FROM users WHERE id = ?", [user_id])
        return rows[0][0] if rows else None

    async def comments(self, post_id: int) -> List[Any]:
        """The comments of one post: one query."""
        return self.db.query(
            "SELECT id, author_id, body FROM comments WHERE post_id = ? ORDER BY id",
            [post_id],
        )


class Batched:
    """The same resolvers through two DataLoaders, one per request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users: DataLoader[int, Optional[str]] = DataLoader(self._users)
        self.comments_by_post: DataLoader[int, List[Any]] = DataLoader(self._comments)

    async def _users(self, ids: List[int]) -> Dict[int, str]:
        rows = self.db.query(
            f"SELECT id, name FROM users WHERE id IN ({_placeholders(ids)})", ids
        )
        # A mapping is fine: ids missing from it resolve to None.
        return dict(rows)

    async def _comments(self, post_ids: List[int]) -> List[List[Any]]:
        rows = self.db.query(
            "SELECT post_id, id, author_id, body FROM comments "
            f"WHERE post_id IN ({_placeholders(post_ids)}) ORDER BY id",
            post_ids,
        )
        by_post: Dict[int, List[Any]] = {post_id: [] for post_id in post_ids}
        for post_id, *comment in rows:
            by_post[post_id].append(tuple(comment))
        return [by_post[post_id] for post_id in post_ids]

    async def user(self, user_id: int) -> Optional[str]:
        """The name of one user, batched with the other loads of this tick."""
        return await self.users.load(user_id)

    async def comments(self, post_id: int) -> List[Any]:
        """The comments of one post, batched with the other loads of this tick."""
        return await self.comments_by_post.load(post_id)


async def resolve(db: Database, resolvers: Any) -> List[Dict[str, Any]]:
    """Resolve ``{ posts { title author comments { body author } } }``.

    Like a GraphQL executor, every field of every object is resolved in its
    own coroutine, concurrently with its siblings.
    """
    posts = db.query("SELECT id, author_id, title FROM posts ORDER BY id")

    async def comment(row: Any) -> Dict[str, Any]:
        _, author_id, body = row
        return {"body": body, "author": await resolvers.user(author_id)}

    async def post(row: Any) -> Dict[str, Any]:
        post_id, author_id, title = row
        author, comments = await asyncio.gather(
            resolvers.user(author_id), resolvers.comments(post_id)
        )
        return {
            "title": title,
            "author": author,
            "comments": await asyncio.gather(*(comment(c) for c in comments)),
        }

    return list(await asyncio.gather(*(post(row) for row in posts)))


@dataclass
class DemoResult:
    """What the demo measured."""

    posts: int
    comments: int
    naive_queries: int
    batched_queries: int
    same_result: bool


async def run_demo(posts: int = 20, comments_per_post: int = 5) -> DemoResult:
    """Resolve the same request naively and with DataLoaders; count queries.

    >>> result = asyncio.run(run_demo(posts=20))
    >>> result.naive_queries, result.batched_queries
    (141, 4)
    """
    db = Database(posts, comments_per_post)
    try:
        naive = await resolve(db, Naive(db))
        naive_queries, db.queries = db.queries, 0
        batched = await resolve(db, Batched(db))
        return DemoResult(
            posts=posts,
            comments=posts * comments_per_post,
            naive_queries=naive_queries,
            batched_queries=db.queries,
            same_result=naive == batched,
        )
    finally:
        db.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the demo and print the query counts."""
    # Plain text: argparse prints the description as it is, and the module
    # docstring's reST markup would show as double backticks.
    parser = argparse.ArgumentParser(
        prog="python -m loadercache",
        description=(
            "Resolve a GraphQL-shaped request (posts, their authors and "
            "comments, the comments' authors) over an in-memory SQLite "
            "database twice, naively and through DataLoaders, and print how "
            "many queries each made."
        ),
    )
    parser.add_argument(
        "--posts", type=int, default=20, help="posts in the request (default 20)"
    )
    parser.add_argument(
        "--comments", type=int, default=5, help="comments per post (default 5)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(run_demo(args.posts, args.comments))
    print(
        f"Request: {result.posts} posts, each with its author and "
        f"{result.comments // max(result.posts, 1)} comments, each comment with "
        "its author."
    )
    print(f"naive resolvers:       {result.naive_queries:4d} queries")
    print(
        f"with DataLoader:       {result.batched_queries:4d} queries "
        "(posts, their authors, their comments, the comments' new authors)"
    )
    print(f"same response:         {'yes' if result.same_result else 'NO'}")


if __name__ == "__main__":
    main()
