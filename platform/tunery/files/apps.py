from django.apps import AppConfig


class FilesConfig(AppConfig):
    name = "tunery.files"
    label = "files"

    def ready(self) -> None:
        # Each starting process clears what an earlier, killed one left mid-upload.
        from tunery.files.uploads import sweep_stale_upload_files

        sweep_stale_upload_files()
