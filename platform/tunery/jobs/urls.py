from django.urls import path

from tunery.jobs.views import FineTuningJobViewSet as Jobs

urlpatterns = [
    path("fine_tuning/jobs", Jobs.as_view({"get": "list", "post": "create"}), name="jobs"),
    path("fine_tuning/jobs/<str:pk>", Jobs.as_view({"get": "retrieve"}), name="job"),
    path("fine_tuning/jobs/<str:pk>/cancel", Jobs.as_view({"post": "cancel"}), name="job-cancel"),
    path("fine_tuning/jobs/<str:pk>/pause", Jobs.as_view({"post": "pause"}), name="job-pause"),
    path("fine_tuning/jobs/<str:pk>/resume", Jobs.as_view({"post": "resume"}), name="job-resume"),
    path("fine_tuning/jobs/<str:pk>/events", Jobs.as_view({"get": "events"}), name="job-events"),
    path("fine_tuning/jobs/<str:pk>/tensorboard", Jobs.as_view({"get": "tensorboard"}), name="job-tensorboard"),
    path("fine_tuning/jobs/<str:pk>/checkpoints", Jobs.as_view({"get": "checkpoints"}), name="job-checkpoints"),
]
