from django.apps import AppConfig


class FilesConfig(AppConfig):
    name = "tunery.files"
    label = "files"

    def ready(self) -> None:
        # Each starting process makes the upload temp folder (Django's checks require it) and
        # clears what an earlier, killed process left in it mid-upload.
        from pathlib import Path

        from django.conf import settings

        from tunery.files.uploads import sweep_stale_upload_files

        Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
        sweep_stale_upload_files()
