"""Routes of the agent pool pages, mounted under /dashboard/provider/agent-pools/."""

from django.urls import path

from provisioning import agent_views

app_name = "agents"

urlpatterns = [
    path("", agent_views.agent_pools, name="pools"),
    path("<int:pk>/", agent_views.agent_pool_detail, name="pool"),
    path("<int:pk>/setup-tokens/", agent_views.agent_setup_token_create_view, name="setup_token_create"),
    path("<int:pk>/agents/<int:agent_pk>/rename/", agent_views.agent_rename_view, name="agent_rename"),
    path("<int:pk>/agents/<int:agent_pk>/revoke/", agent_views.agent_revoke_view, name="agent_revoke"),
]
