from django.urls import path

from tunery.verticals.views import VerticalDetailView, VerticalListView, VerticalSettingsView

urlpatterns = [
    path("verticals", VerticalListView.as_view(), name="verticals"),
    path("verticals/<str:vertical_id>", VerticalDetailView.as_view(), name="vertical"),
    path("verticals/<str:vertical_id>/settings", VerticalSettingsView.as_view(), name="vertical-settings"),
]
