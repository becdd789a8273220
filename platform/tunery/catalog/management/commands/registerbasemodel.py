"""``manage.py registerbasemodel <name> (--path DIR | --package PKG) [--tenant SLUG] [--task KIND ...]``.

Reads config.json (architecture) and the safetensors headers (parameter count); idempotent."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tunery.catalog.services import register_base_model
from tunery.tenants.models import Tenant


class Command(BaseCommand):
    help = "Register (or update) a base model from a local directory or an installed model package."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The id clients pass as `model`.")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--path", default="", help="Directory with config.json and *.safetensors.")
        source.add_argument("--package", default="", help="Installed package with get_model_path().")
        parser.add_argument("--tenant", help="Offer it to this tenant only (default: everyone).")
        parser.add_argument("--task", action="append", dest="tasks", help="Task kind it suits (repeatable).")
        parser.add_argument("--description", default="")

    def handle(self, *args, name: str, path: str, package: str, tenant: str | None, **options) -> None:
        owner = None
        if tenant:
            owner = Tenant.objects.filter(slug=tenant).first()
            if owner is None:
                raise CommandError(f"no tenant {tenant!r}")
        try:
            model, created = register_base_model(
                name=name,
                local_path=path,
                package=package,
                tenant=owner,
                tasks=options["tasks"],
                description=options["description"],
            )
        except (ValueError, OSError, ImportError) as exc:
            raise CommandError(str(exc)) from exc
        verb = "Registered" if created else "Updated"
        self.stdout.write(f"{verb} base model {model.name}: {model.architecture}, {model.parameters:,} parameters")
