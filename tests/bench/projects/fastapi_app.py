"""The baseline: `GET /projects` written the way the FastAPI + SQLModel starters do it.

    uvicorn --factory tests.bench.projects.fastapi_app:create_app

As in tiangolo's full-stack-fastapi-template and its many forks: a SQLModel table model
mapped to the existing `projects` table, public/response models derived from a base
model, an async engine on `postgresql+asyncpg`, an `AsyncSession` per request from a
dependency, an `HTTPBearer` dependency that decodes and checks the JWT (here with
joserfc, RS256, against the public half of the same dev key the realtime server trusts),
and an endpoint that counts, selects a page and returns `{"data": [...], "meta": {...}}`
through its `response_model`.

Same database, same query as `handlers/projects_sql.page`: tenant from the token, not
deleted, newest first (`ORDER BY id DESC`), `LIMIT`/`OFFSET`, plus the tenant's total read
from `project_counts` (kept by triggers; before migration 0004 both ran a `count(*)`).

Configured by the environment (the bench runner sets these):

- `BENCH_DATABASE_URL`: the PostgreSQL database (`postgresql://` or `postgresql+asyncpg://`);
- `BENCH_DEV_KEY_FILE`: the development issuer's key file (its public half is used);
- `BENCH_POOL_SIZE`: connections in the engine's pool (default 10, realtime's default).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from joserfc.jwt import JWTClaimsRegistry
from pydantic import BaseModel
from sqlalchemy import Column, DateTime
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel import Field, SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

ISSUER = "urn:realtime:dev"  # what realtime's development issuer signs with
AUDIENCE = "realtime"


# --- models (app/models.py in the starters) ---------------------------------------------


class ProjectBase(SQLModel):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class Project(ProjectBase, table=True):
    __tablename__ = "projects"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: str = Field(max_length=255)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    is_deleted: bool = Field(default=False)
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class ProjectCount(SQLModel, table=True):
    """The per-tenant counts the realtime schema keeps by triggers (migration 0004): the
    baseline reads its total the same way, so both run the same two queries."""

    __tablename__ = "project_counts"

    tenant_id: str = Field(primary_key=True, max_length=255)
    live: int
    total: int


class ProjectPublic(ProjectBase):
    id: int
    created_at: datetime
    updated_at: datetime
    is_deleted: bool
    deleted_at: datetime | None


class PageMeta(SQLModel):
    page: int
    per_page: int
    total: int
    pages: int


class ProjectsPublic(SQLModel):
    data: list[ProjectPublic]
    meta: PageMeta


class TokenPayload(BaseModel):
    sub: str
    tenant_id: str | None = None
    roles: list[str] = []


# --- core/config.py, core/db.py, core/security.py ---------------------------------------


def _database_url() -> str:
    url = os.environ["BENCH_DATABASE_URL"]
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise RuntimeError("BENCH_DATABASE_URL must be a PostgreSQL URL")


def _public_key() -> RSAKey:
    with open(os.environ["BENCH_DEV_KEY_FILE"]) as handle:
        private = RSAKey.import_key(json.load(handle))
    return RSAKey.import_key(private.as_dict(private=False))


def _engine() -> AsyncEngine:
    pool_size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    return create_async_engine(_database_url(), pool_size=pool_size, max_overflow=0)


# --- api/deps.py --------------------------------------------------------------------------

reusable_oauth2 = HTTPBearer()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(request.app.state.engine) as session:
        yield session


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(reusable_oauth2)],
) -> TokenPayload:
    try:
        token = jwt.decode(
            credentials.credentials, request.app.state.public_key, algorithms=["RS256"]
        )
        JWTClaimsRegistry(
            leeway=30,
            iss={"essential": True, "value": ISSUER},
            aud={"essential": True, "value": AUDIENCE},
            sub={"essential": True},
            exp={"essential": True},
        ).validate(token.claims)
    except (JoseError, ValueError):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="Could not validate credentials"
        ) from None
    claims = token.claims
    roles = claims.get("realm_access", {}).get("roles", [])
    return TokenPayload(sub=claims["sub"], tenant_id=claims.get("tenant_id"), roles=roles)


SessionDep = Annotated[AsyncSession, Depends(get_session)]
CurrentUser = Annotated[TokenPayload, Depends(get_current_user)]


# --- api/routes/projects.py -------------------------------------------------------------


async def read_projects(
    session: SessionDep,
    current_user: CurrentUser,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Any:
    """Retrieve the caller's projects, newest first."""
    tenant = current_user.tenant_id or current_user.sub
    where = (col(Project.tenant_id) == tenant, col(Project.is_deleted).is_(False))
    count_statement = select(ProjectCount.live).where(ProjectCount.tenant_id == tenant)
    total = (await session.exec(count_statement)).first() or 0
    statement = (
        select(Project)
        .where(*where)
        .order_by(col(Project.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    projects = (await session.exec(statement)).all()
    meta = PageMeta(page=page, per_page=per_page, total=total, pages=math.ceil(total / per_page))
    return ProjectsPublic(data=projects, meta=meta)


async def health_check() -> bool:
    return True


# --- main.py ------------------------------------------------------------------------------


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = _engine()
        app.state.public_key = _public_key()
        yield
        await app.state.engine.dispose()

    app = FastAPI(title="projects baseline", lifespan=lifespan)
    app.get("/projects", response_model=ProjectsPublic)(read_projects)
    app.get("/health")(health_check)
    return app
