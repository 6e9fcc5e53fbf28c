"""Routes of the cloud accounts pages, mounted under /dashboard/provider/cloud-accounts/."""

from django.urls import path

from provisioning import views

app_name = "provisioning"

urlpatterns = [
    path("", views.cloud_accounts, name="cloud_accounts"),
    path("add/<str:backend>/", views.cloud_account_add, name="cloud_account_add"),
    path("<int:pk>/", views.cloud_account_detail, name="cloud_account"),
    path("<int:pk>/rename/", views.cloud_account_rename_view, name="cloud_account_rename"),
    path("<int:pk>/token/", views.cloud_account_token_view, name="cloud_account_token"),
    path("<int:pk>/validate/", views.cloud_account_validate_view, name="cloud_account_validate"),
    path("<int:pk>/delete/", views.cloud_account_delete_view, name="cloud_account_delete"),
]
