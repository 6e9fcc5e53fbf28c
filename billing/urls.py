from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("earnings/", views.earnings, name="earnings"),
    path("payouts/setup/", views.payouts_setup, name="payouts_setup"),
    path("payouts/setup/refresh/", views.payouts_refresh, name="payouts_refresh"),
    path("payouts/setup/return/", views.payouts_return, name="payouts_return"),
    path("payments/", views.payments, name="payments"),
    path("payment-methods/", views.payment_methods_portal, name="payment_methods"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe_webhook"),
    path("invoices/<str:number>/", views.invoice_detail, name="invoice"),
    path("invoices/<str:number>/pdf/", views.invoice_pdf, name="invoice_pdf"),
    path("credit-notes/<str:number>/", views.credit_note_detail, name="credit_note"),
    path("credit-notes/<str:number>/pdf/", views.credit_note_pdf, name="credit_note_pdf"),
]
