from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from marketplace.api.exceptions import api_not_found
from marketplace.api.schema import API_DESCRIPTION

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(custom_settings={"DESCRIPTION": API_DESCRIPTION}), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("marketplace.api.urls")),
    path("recipes/", include("recipes.urls")),
    path("billing/", include("billing.urls")),
    path("dashboard/provider/cloud-accounts/", include("provisioning.urls")),
    path("dashboard/provider/agent-pools/", include("provisioning.agent_urls")),
    path("resources/", include("provisioning.resource_urls")),
    # Browsers ask for /favicon.ico whatever the page links; the icon is an SVG in static files.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("", include("marketplace.urls")),
    # Last: an /api/ path that no route above matched returns a JSON 404, as API clients expect.
    re_path(r"^api/", api_not_found),
]
