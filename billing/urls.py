from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("earnings/", views.earnings, name="earnings"),
    path("payouts/setup/", views.payouts_setup, name="payouts_setup"),
    path("payouts/setup/refresh/", views.payouts_refresh, name="payouts_refresh"),
    path("payouts/setup/return/", views.payouts_return, name="payouts_return"),
    path("payments/", views.payments, name="payments"),
    path("payment-methods/", views.payment_methods_portal, name="payment_methods"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe_webhook"),
]
