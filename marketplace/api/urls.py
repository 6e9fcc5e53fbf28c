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
from provisioning.api.resource_views import ResourceViewSet
from provisioning.api.views import CloudAccountViewSet
from recipes.api.views import RecipeViewSet

router = SimpleRouter()
router.register("offerings", views.OfferingViewSet, basename="api-offering")
router.register("rentals", views.RentalViewSet, basename="api-rental")
router.register("provider/rentals", views.ProviderRentalViewSet, basename="api-provider-rental")
router.register("provider/offerings", views.ProviderOfferingViewSet, basename="api-provider-offering")
router.register("cloud-accounts", CloudAccountViewSet, basename="api-cloud-account")
router.register("resources", ResourceViewSet, basename="api-resource")
router.register("ssh-keys", views.SshKeyViewSet, basename="api-ssh-key")
router.register("recipes", RecipeViewSet, basename="api-recipe")
router.register("billing/invoices", InvoiceViewSet, basename="api-billing-invoice")
router.register("billing/credit-notes", CreditNoteViewSet, basename="api-billing-credit-note")

urlpatterns = [
    path("provider/profile/", views.ProviderProfileView.as_view(), name="api-provider-profile"),
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
