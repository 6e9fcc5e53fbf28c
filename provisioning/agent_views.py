"""Agent pool pages: list and add pools, create setup tokens, rename and revoke agents.

Every view looks pools up among the signed-in user's own, so another user's pool is a 404.
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from provisioning.agent_services import (
    agent_pool_create,
    agent_rename,
    agent_revoke,
    agent_setup_token_create,
)
from provisioning.forms import AgentPoolForm, AgentRenameForm
from provisioning.models import Agent, AgentPool
from provisioning.views import _add_service_errors

logger = logging.getLogger(__name__)


def _own_pool(request: HttpRequest, pk: int) -> AgentPool:
    return get_object_or_404(AgentPool.objects.select_related("cloud_account__owner"), pk=pk, cloud_account__owner=request.user)


def _own_agent(request: HttpRequest, pk: int, agent_pk: int) -> Agent:
    pool = _own_pool(request, pk)
    agent = get_object_or_404(Agent, pk=agent_pk, pool=pool)
    agent.pool = pool
    return agent


def _render_list(request: HttpRequest, form: AgentPoolForm | None = None, status: int = 200) -> HttpResponse:
    pools = (
        AgentPool.objects.filter(cloud_account__owner=request.user, cloud_account__deleted_at__isnull=True)
        .select_related("cloud_account")
        .prefetch_related("agents")
    )
    return render(
        request, "provisioning/agent_pools.html", {"pools": pools, "form": form or AgentPoolForm()}, status=status
    )


@login_required
@require_http_methods(["GET", "POST"])
def agent_pools(request: HttpRequest) -> HttpResponse:
    """Render the user's agent pools with their agents' status, and add a pool on POST."""
    if request.method == "GET":
        return _render_list(request)
    form = AgentPoolForm(request.POST)
    if form.is_valid():
        try:
            pool = agent_pool_create(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Agent pool {pool.name!r} added. Create a setup token to connect its first agent.")
            return redirect("agents:pool", pk=pool.pk)
    return _render_list(request, form, status=400)


def _render_detail(request: HttpRequest, pool: AgentPool, *, setup_token: str = "", rename_errors=None, status: int = 200):
    context = {
        "pool": pool,
        "agents": list(pool.agents.all()),
        "setup_token": setup_token,
        "tokens": list(pool.setup_tokens.select_related("agent")[:20]),
        "rename_errors": rename_errors or {},
    }
    return render(request, "provisioning/agent_pool_detail.html", context, status=status)


@login_required
@require_http_methods(["GET"])
def agent_pool_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _own_pool(request, pk))


@login_required
@require_POST
def agent_setup_token_create_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Create a setup token and show it in this response only; it is never shown again."""
    pool = _own_pool(request, pk)
    row, token = agent_setup_token_create(pool=pool, actor=request.user)
    response = _render_detail(request, pool, setup_token=token)
    # The token is in the page, so no cache may keep it.
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def agent_rename_view(request: HttpRequest, pk: int, agent_pk: int) -> HttpResponse:
    agent = _own_agent(request, pk, agent_pk)
    form = AgentRenameForm(request.POST)
    if form.is_valid():
        try:
            agent_rename(agent=agent, actor=request.user, name=form.cleaned_data["name"])
        except ValidationError as exc:
            return _render_detail(request, agent.pool, rename_errors={agent.pk: exc.messages}, status=400)
        messages.success(request, f"Agent renamed to {agent.name!r}.")
        return redirect("agents:pool", pk=pk)
    return _render_detail(request, agent.pool, rename_errors={agent.pk: form.errors.get("name", [])}, status=400)


@login_required
@require_POST
def agent_revoke_view(request: HttpRequest, pk: int, agent_pk: int) -> HttpResponse:
    agent = _own_agent(request, pk, agent_pk)
    agent_revoke(agent=agent, actor=request.user)
    messages.success(request, f"Agent {agent.name!r} revoked; its next request to the platform is rejected.")
    return redirect("agents:pool", pk=pk)
