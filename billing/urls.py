from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("earnings/", views.earnings, name="earnings"),
    path("payments/", views.payments, name="payments"),
    path("invoices/<str:number>/", views.invoice_detail, name="invoice"),
    path("invoices/<str:number>/pdf/", views.invoice_pdf, name="invoice_pdf"),
    path("credit-notes/<str:number>/", views.credit_note_detail, name="credit_note"),
    path("credit-notes/<str:number>/pdf/", views.credit_note_pdf, name="credit_note_pdf"),
]
