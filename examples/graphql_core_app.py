"""Plain graphql-core: per-request loaders reached through ``current_loaders``.

    python examples/graphql_core_app.py

Each request runs inside ``use_loaders(BlogLoaders(...))``; any resolver, at
any depth, finds that request's loaders with ``current_loaders(BlogLoaders)``
instead of threading them through ``info.context``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

from blog import QUERY, Blog, BlogLoaders, Comment, Post, User, report
from graphql import (
    GraphQLField,
    GraphQLList,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    GraphQLString,
    graphql,
)

from loadercache.registry import current_loaders, use_loaders


def resolve_posts(root: None, info: GraphQLResolveInfo) -> List[Post]:
    return current_loaders(BlogLoaders).blog.posts()


async def resolve_author(
    parent: Union[Post, Comment], info: GraphQLResolveInfo
) -> Optional[User]:
    return await current_loaders(BlogLoaders).users.load(parent.author_id)


async def resolve_comments(post: Post, info: GraphQLResolveInfo) -> List[Comment]:
    return await current_loaders(BlogLoaders).comments_by_post.load(post.id)


UserType = GraphQLObjectType("User", {"name": GraphQLField(GraphQLString)})
CommentType = GraphQLObjectType(
    "Comment",
    {
        "body": GraphQLField(GraphQLString),
        "author": GraphQLField(UserType, resolve=resolve_author),
    },
)
PostType = GraphQLObjectType(
    "Post",
    {
        "title": GraphQLField(GraphQLString),
        "author": GraphQLField(UserType, resolve=resolve_author),
        "comments": GraphQLField(GraphQLList(CommentType), resolve=resolve_comments),
    },
)
schema = GraphQLSchema(
    query=GraphQLObjectType(
        "Query", {"posts": GraphQLField(GraphQLList(PostType), resolve=resolve_posts)}
    )
)


async def run(batching: bool = True) -> Tuple[Dict[str, Any], int]:
    """Serve one request for QUERY; return its data and the queries it cost."""
    with Blog() as blog, use_loaders(BlogLoaders(blog, batching=batching)):
        result = await graphql(schema, QUERY)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data, blog.queries


if __name__ == "__main__":
    report("graphql-core", run)
