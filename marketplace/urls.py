from django.urls import path

from marketplace import provider_views, views

app_name = "marketplace"

urlpatterns = [
    path("", views.catalog, name="catalog"),
    path("offerings/<slug:slug>/", views.offering_detail, name="offering"),
    path("offerings/<slug:slug>/rent/", views.rent, name="rent"),
    path("rentals/<uuid:public_id>/", views.rental_detail, name="rental"),
    path("rentals/<uuid:public_id>/status/", views.rental_status, name="rental_status"),
    path("rentals/<uuid:public_id>/cancel/", views.rental_cancel, name="rental_cancel"),
    path("rentals/<uuid:public_id>/pay/", views.rental_pay, name="rental_pay"),
    path("rentals/<uuid:public_id>/accept/", views.rental_accept, name="rental_accept"),
    path("rentals/<uuid:public_id>/reject/", views.rental_reject, name="rental_reject"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/provider/", views.provider_dashboard, name="provider_dashboard"),
    path("dashboard/provider/profile/", views.provider_profile_save, name="provider_profile_save"),
    path("dashboard/provider/onboarding/", provider_views.provider_onboarding, name="provider_onboarding"),
    path("dashboard/provider/cloud-accounts/new/", views.cloud_account_add, name="cloud_account_add"),
    path("dashboard/provider/offerings/new/", provider_views.offering_edit, name="offering_create"),
    path("dashboard/provider/offerings/<slug:slug>/edit/", provider_views.offering_edit, name="offering_edit"),
    path(
        "dashboard/provider/offerings/<slug:slug>/duplicate/",
        provider_views.offering_duplicate_view,
        name="offering_duplicate",
    ),
    path(
        "dashboard/provider/offerings/<slug:slug>/publish/",
        provider_views.offering_publish_view,
        name="offering_publish",
    ),
    path(
        "dashboard/provider/offering-form/catalog-options/",
        provider_views.offering_catalog_options,
        name="offering_catalog_options",
    ),
    path("dashboard/provider/offering-form/preview/", provider_views.offering_preview, name="offering_preview"),
    path("dashboard/provider/rentals/", provider_views.provider_rentals, name="provider_rentals"),
    path("dashboard/provider/offerings/export.csv", views.offering_csv_download, name="offering_csv_export"),
    path("dashboard/provider/offerings/import/", views.offering_csv_upload, name="offering_csv_import"),
    path(
        "dashboard/provider/offerings/import/<uuid:public_id>/",
        views.offering_import_preview,
        name="offering_import_preview",
    ),
    path(
        "dashboard/provider/offerings/import/<uuid:public_id>/apply/",
        views.offering_import_apply,
        name="offering_import_apply",
    ),
    path("providers/<slug:slug>/", views.provider_detail, name="provider"),
    path("account/ssh-keys/", views.ssh_keys, name="ssh_keys"),
    path("account/ssh-keys/<int:key_id>/delete/", views.ssh_key_remove, name="ssh_key_delete"),
    path("account/api-token/", views.api_token, name="api_token"),
]
