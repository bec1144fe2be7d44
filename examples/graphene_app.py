"""Graphene 3: per-request loaders in the context value.

    python examples/graphene_app.py

Graphene hands ``context_value`` to every resolver as ``info.context``; a new
``BlogLoaders`` per execution is the whole integration.  (Behind a web
framework, build it where the view builds the context.)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import graphene
from blog import QUERY, Blog, BlogLoaders, Comment, Post, User, report


async def resolve_author(
    parent: Union[Post, Comment], info: graphene.ResolveInfo
) -> Optional[User]:
    loaders: BlogLoaders = info.context["loaders"]
    return await loaders.users.load(parent.author_id)


class UserType(graphene.ObjectType):
    class Meta:
        name = "User"

    name = graphene.String()


class CommentType(graphene.ObjectType):
    class Meta:
        name = "Comment"

    body = graphene.String()
    author = graphene.Field(UserType, resolver=resolve_author)


class PostType(graphene.ObjectType):
    class Meta:
        name = "Post"

    title = graphene.String()
    author = graphene.Field(UserType, resolver=resolve_author)
    comments = graphene.List(CommentType)

    @staticmethod
    async def resolve_comments(post: Post, info: graphene.ResolveInfo) -> List[Comment]:
        loaders: BlogLoaders = info.context["loaders"]
        return await loaders.comments_by_post.load(post.id)


class Query(graphene.ObjectType):
    posts = graphene.List(PostType)

    @staticmethod
    def resolve_posts(root: None, info: graphene.ResolveInfo) -> List[Post]:
        loaders: BlogLoaders = info.context["loaders"]
        return loaders.blog.posts()


schema = graphene.Schema(query=Query)


async def run(batching: bool = True) -> Tuple[Dict[str, Any], int]:
    """Serve one request for QUERY; return its data and the queries it cost."""
    with Blog() as blog:
        result = await schema.execute_async(
            QUERY, context_value={"loaders": BlogLoaders(blog, batching=batching)}
        )
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data, blog.queries


if __name__ == "__main__":
    report("graphene", run)
