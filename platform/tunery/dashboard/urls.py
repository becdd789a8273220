from django.contrib import admin
from django.urls import path

from tunery.dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", admin.site.admin_view(views.usage), name="usage"),
    path(
        "tenants/<int:tenant_id>/verticals/<slug:vertical>",
        admin.site.admin_view(views.toggle_vertical),
        name="toggle-vertical",
    ),
    path("jobs/<str:job_id>/", admin.site.admin_view(views.job_detail), name="job"),
    path("jobs/<str:job_id>/chart.svg", admin.site.admin_view(views.job_chart_svg), name="job-chart"),
]
