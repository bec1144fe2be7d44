"""Ariadne: per-request loaders from the ASGI app's ``context_value`` callable.

    python examples/ariadne_app.py                          # prints query counts
    uvicorn --app-dir examples ariadne_app:app              # serves it

Ariadne calls ``context_value(request, data)`` once per request when it is
callable; returning a new ``BlogLoaders`` there gives every request its own.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import httpx
from ariadne import ObjectType, QueryType, make_executable_schema
from ariadne.asgi import GraphQL
from blog import (
    QUERY,
    Blog,
    BlogLoaders,
    Comment,
    Post,
    User,
    report,
    served_blog,
)
from graphql import GraphQLResolveInfo

type_defs = """
    type Query { posts: [Post!]! }
    type Post { title: String! author: User comments: [Comment!]! }
    type Comment { body: String! author: User }
    type User { name: String! }
"""

query = QueryType()
post = ObjectType("Post")
comment = ObjectType("Comment")


@query.field("posts")
def resolve_posts(root: None, info: GraphQLResolveInfo) -> List[Post]:
    loaders: BlogLoaders = info.context["loaders"]
    return loaders.blog.posts()


@post.field("author")
@comment.field("author")
async def resolve_author(
    parent: Union[Post, Comment], info: GraphQLResolveInfo
) -> Optional[User]:
    loaders: BlogLoaders = info.context["loaders"]
    return await loaders.users.load(parent.author_id)


@post.field("comments")
async def resolve_comments(parent: Post, info: GraphQLResolveInfo) -> List[Comment]:
    loaders: BlogLoaders = info.context["loaders"]
    return await loaders.comments_by_post.load(parent.id)


schema = make_executable_schema(type_defs, query, post, comment)


def make_app(blog: Optional[Blog] = None, *, batching: bool = True) -> GraphQL:
    """The ASGI app: a new set of loaders for every request.

    Without *blog*, it serves the blog its first request opens.
    """

    def context_value(request: Any, data: Any) -> Dict[str, Any]:
        loaders = BlogLoaders(
            blog if blog is not None else served_blog(), batching=batching
        )
        return {"request": request, "loaders": loaders}

    return GraphQL(schema, context_value=context_value)


app = make_app()


async def run(batching: bool = True) -> Tuple[Dict[str, Any], int]:
    """Serve one HTTP request for QUERY; return its data and the queries it cost."""
    with Blog() as blog:
        asgi = httpx.ASGITransport(app=make_app(blog, batching=batching))
        async with httpx.AsyncClient(transport=asgi, base_url="http://test") as client:
            response = await client.post("/", json={"query": QUERY})
    body = response.json()
    assert "errors" not in body, body
    return body["data"], blog.queries


if __name__ == "__main__":
    report("ariadne", run)
