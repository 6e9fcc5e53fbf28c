"""Routes of the REST API, mounted under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api.views import (
    BillingProfileView,
    CreditNoteViewSet,
    EarningsView,
    InvoiceViewSet,
    PaymentListView,
    PayoutDetailView,
    PayoutListView,
    PayoutOnboardingLinkView,
)
from marketplace.api import views
from provisioning.api import agent_views
from provisioning.api.agent_pool_views import AgentPoolViewSet
from provisioning.api.resource_views import ResourceViewSet
from provisioning.api.views import CloudAccountViewSet
from recipes.api.views import RecipeViewSet

router = SimpleRouter()
router.register("offerings", views.OfferingViewSet, basename="api-offering")
router.register("rentals", views.RentalViewSet, basename="api-rental")
router.register("provider/rentals", views.ProviderRentalViewSet, basename="api-provider-rental")
router.register("provider/offerings", views.ProviderOfferingViewSet, basename="api-provider-offering")
router.register("cloud-accounts", CloudAccountViewSet, basename="api-cloud-account")
router.register("agent-pools", AgentPoolViewSet, basename="api-agent-pool")
router.register("resources", ResourceViewSet, basename="api-resource")
router.register("ssh-keys", views.SshKeyViewSet, basename="api-ssh-key")
router.register("recipes", RecipeViewSet, basename="api-recipe")
router.register("billing/invoices", InvoiceViewSet, basename="api-billing-invoice")
router.register("billing/credit-notes", CreditNoteViewSet, basename="api-billing-credit-note")

urlpatterns = [
    path("provider/profile/", views.ProviderProfileView.as_view(), name="api-provider-profile"),
    path("provider/onboarding/", views.ProviderOnboardingView.as_view(), name="api-provider-onboarding"),
    path(
        "cloud-accounts/<int:pk>/catalog/",
        views.CloudAccountCatalogView.as_view(),
        name="api-cloud-account-catalog",
    ),
    # A slug cannot contain ".", so these paths never shadow an offering's detail route.
    path(
        "provider/offerings/export.csv",
        views.ProviderOfferingCsvExportView.as_view(),
        name="api-provider-offering-csv-export",
    ),
    path(
        "provider/offerings/import.csv",
        views.ProviderOfferingCsvImportView.as_view(),
        name="api-provider-offering-csv-import",
    ),
    *router.urls,
]

urlpatterns += [
    path("billing/earnings/", EarningsView.as_view(), name="api-billing-earnings"),
    path("billing/payments/", PaymentListView.as_view(), name="api-billing-payments"),
    path("billing/payouts/", PayoutListView.as_view(), name="api-billing-payouts"),
    path("billing/payouts/<int:pk>/", PayoutDetailView.as_view(), name="api-billing-payout"),
    path("billing/payouts/onboarding-link/", PayoutOnboardingLinkView.as_view(), name="api-billing-payout-onboarding"),
    path("billing/profile/", BillingProfileView.as_view(), name="api-billing-profile"),
]

urlpatterns += [
    path("agent/setup/", agent_views.AgentSetupView.as_view(), name="api-agent-setup"),
    path("agent/heartbeat/", agent_views.HeartbeatView.as_view(), name="api-agent-heartbeat"),
    path("agent/work/", agent_views.WorkView.as_view(), name="api-agent-work"),
    path("agent/reconcile/", agent_views.ReconcileView.as_view(), name="api-agent-reconcile"),
    path("agent/health/", agent_views.HealthView.as_view(), name="api-agent-health"),
    path("agent/contracts/<int:pk>/claim/", agent_views.ClaimView.as_view(), name="api-agent-claim"),
    path("agent/contracts/<int:pk>/progress/", agent_views.ProgressView.as_view(), name="api-agent-progress"),
    path("agent/contracts/<int:pk>/success/", agent_views.SuccessView.as_view(), name="api-agent-success"),
    path("agent/contracts/<int:pk>/failure/", agent_views.FailureView.as_view(), name="api-agent-failure"),
    path("agent/contracts/<int:pk>/recipe-runs/", agent_views.RecipeRunStartView.as_view(), name="api-agent-recipe-run"),
    path(
        "agent/contracts/<int:pk>/recipe-runs/<int:run_id>/log/", agent_views.RecipeLogView.as_view(), name="api-agent-recipe-log"
    ),
    path(
        "agent/contracts/<int:pk>/recipe-runs/<int:run_id>/result/",
        agent_views.RecipeResultView.as_view(),
        name="api-agent-recipe-result",
    ),
    path("agent/contracts/<int:pk>/terminated/", agent_views.TerminatedView.as_view(), name="api-agent-terminated"),
]
