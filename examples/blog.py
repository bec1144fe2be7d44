"""The data layer the framework examples share: a blog in SQLite, and its loaders.

Every example serves the same GraphQL query over the same data (10 posts, each
with its author and 3 comments, each comment with its author), so their query
counts can be compared:

* without batching (each field queries on its own): 1 query for the posts,
  then per post 1 for its author and 1 for its comments, then 1 per comment
  for its author: 1 + 10 + 10 + 30 = 51 queries;
* with DataLoaders: one query per level, 4 in all (the comments' authors that
  the posts' authors already loaded come from the cache).

The "without batching" run uses the very same resolvers over loaders built
with ``batch=False, cache=False``: such a loader makes one query per
``load()``, exactly what a resolver that queries the database itself does.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

from loadercache import DataLoader
from loadercache.registry import Loaders, loader_property

QUERY = """
{
  posts {
    title
    author { name }
    comments {
      body
      author { name }
    }
  }
}
"""

NAIVE_QUERIES = 1 + 10 + 10 + 30
BATCHED_QUERIES = 4


@dataclass(frozen=True)
class User:
    id: int
    name: str


@dataclass(frozen=True)
class Post:
    id: int
    author_id: int
    title: str


@dataclass(frozen=True)
class Comment:
    id: int
    post_id: int
    author_id: int
    body: str


class Blog:
    """An in-memory SQLite blog that counts the queries it runs; a context manager."""

    def __init__(
        self, posts: int = 10, comments_per_post: int = 3, users: int = 50
    ) -> None:
        self.queries = 0
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
            CREATE TABLE posts (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL,
                                title TEXT NOT NULL);
            CREATE TABLE comments (id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL,
                                   author_id INTEGER NOT NULL, body TEXT NOT NULL);
            CREATE TABLE bookmarks (user_id INTEGER NOT NULL, post_id INTEGER NOT NULL);
            """
        )
        self.db.executemany(
            "INSERT INTO users VALUES (?, ?)",
            [(i, f"user {i}") for i in range(1, users + 1)],
        )
        self.db.executemany(
            "INSERT INTO posts VALUES (?, ?, ?)",
            [(i, 1 + i % users, f"post {i}") for i in range(1, posts + 1)],
        )
        self.db.executemany(
            "INSERT INTO comments (post_id, author_id, body) VALUES (?, ?, ?)",
            [
                (p, 1 + (p + c) % users, f"comment {c} on post {p}")
                for p in range(1, posts + 1)
                for c in range(comments_per_post)
            ],
        )
        # Each user has bookmarked every third post, a different third per user.
        self.db.executemany(
            "INSERT INTO bookmarks VALUES (?, ?)",
            [
                (u, p)
                for u in range(1, users + 1)
                for p in range(1, posts + 1)
                if (u + p) % 3 == 0
            ],
        )

    def __enter__(self) -> Blog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> List[Any]:
        self.queries += 1
        return self.db.execute(sql, tuple(params)).fetchall()

    def posts(self) -> List[Post]:
        return [Post(*row) for row in self.query("SELECT * FROM posts ORDER BY id")]


_served: Optional[Blog] = None


def served_blog() -> Blog:
    """The blog of an app run by a server: one per process, opened on first use.

    (Opened at import, an unclosed database would outlive every test that
    imports an example.)
    """
    global _served
    if _served is None:
        _served = Blog()
    return _served


def _marks(keys: Sequence[int]) -> str:
    return ", ".join("?" * len(keys))


async def fetch_users(blog: Blog, ids: List[int]) -> Dict[int, User]:
    """The users with these ids, as a mapping (a missing id loads None)."""
    rows = blog.query(f"SELECT * FROM users WHERE id IN ({_marks(ids)})", ids)
    return {row[0]: User(*row) for row in rows}


async def fetch_comments(blog: Blog, post_ids: List[int]) -> List[List[Comment]]:
    """The comments of each post, aligned with post_ids."""
    rows = blog.query(
        f"SELECT * FROM comments WHERE post_id IN ({_marks(post_ids)}) ORDER BY id",
        post_ids,
    )
    by_post: Dict[int, List[Comment]] = {post_id: [] for post_id in post_ids}
    for row in rows:
        by_post[row[1]].append(Comment(*row))
    return [by_post[post_id] for post_id in post_ids]


async def fetch_bookmarked(
    blog: Blog, viewer_id: int, post_ids: List[int]
) -> List[bool]:
    """Whether the viewer has bookmarked each post: a per-viewer value."""
    rows = blog.query(
        f"SELECT post_id FROM bookmarks WHERE user_id = ? "
        f"AND post_id IN ({_marks(post_ids)})",
        [viewer_id, *post_ids],
    )
    marked = {row[0] for row in rows}
    return [post_id in marked for post_id in post_ids]


class BlogLoaders(Loaders):
    """The loaders of one request; build one set per request, never share it."""

    def __init__(self, blog: Blog, *, batching: bool = True) -> None:
        self.blog = blog
        # batching=False gives the N+1 baseline: one query per load().
        self.options: Dict[str, Any] = {"batch": batching, "cache": batching}

    @loader_property
    def users(self) -> DataLoader[int, Optional[User]]:
        return DataLoader(functools.partial(fetch_users, self.blog), **self.options)

    @loader_property
    def comments_by_post(self) -> DataLoader[int, List[Comment]]:
        return DataLoader(functools.partial(fetch_comments, self.blog), **self.options)


Run = Callable[..., Awaitable[Tuple[Dict[str, Any], int]]]


def report(framework: str, run: Run) -> None:
    """Run an example's query without and with batching; print the counts."""
    import asyncio

    naive, naive_queries = asyncio.run(run(batching=False))
    batched, batched_queries = asyncio.run(run(batching=True))
    print(f"{framework}: 10 posts, each with its author and 3 comments with theirs")
    print(f"naive resolvers: {naive_queries:4d} queries")
    print(f"with DataLoader: {batched_queries:4d} queries")
    print(f"same response:   {'yes' if naive == batched else 'NO'}")
