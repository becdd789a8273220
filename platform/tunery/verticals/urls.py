from django.urls import path

from tunery.verticals.views import VerticalDetailView, VerticalListView

urlpatterns = [
    path("verticals", VerticalListView.as_view(), name="verticals"),
    path("verticals/<str:vertical_id>", VerticalDetailView.as_view(), name="vertical"),
]
