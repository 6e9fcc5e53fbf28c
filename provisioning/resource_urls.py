"""Routes of the "My resources" pages, mounted under /resources/ with the namespace `resources`."""

from django.urls import path

from provisioning import resource_views as views

app_name = "resources"

urlpatterns = [
    path("", views.resource_list_view, name="list"),
    path("new/", views.resource_create_view, name="create"),
    path("<uuid:public_id>/", views.resource_detail_view, name="detail"),
    path("<uuid:public_id>/status/", views.resource_status_view, name="status"),
    path("<uuid:public_id>/start/", views.resource_start_view, name="start"),
    path("<uuid:public_id>/stop/", views.resource_stop_view, name="stop"),
    path("<uuid:public_id>/delete/", views.resource_delete_view, name="delete"),
    path("<uuid:public_id>/list/", views.resource_list_on_marketplace_view, name="list_on_marketplace"),
    path("<uuid:public_id>/unlist/", views.resource_unlist_view, name="unlist"),
]
