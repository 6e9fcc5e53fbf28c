from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("earnings/", views.earnings, name="earnings"),
    path("payments/", views.payments, name="payments"),
]
