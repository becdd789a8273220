"""``manage.py createtenant <slug> [--owner EMAIL] [--name NAME] [--vertical ID ...] [--with-key]``.

With ``--with-key`` the new API key is printed alone on the last line, for scripts:
``KEY=$(python manage.py createtenant acme --with-key | tail -n1)``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from tunery.tenants import services
from tunery.tenants.models import Membership, Tenant
from tunery.verticals import registry


class Command(BaseCommand):
    help = "Create a tenant (and its owner), optionally enable vertical packs and print a new API key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--owner", metavar="EMAIL", help="Owner user (created if missing).")
        parser.add_argument(
            "--vertical", action="append", default=[], metavar="ID", help="Enable this installed pack (repeatable)."
        )
        parser.add_argument("--all-verticals", action="store_true", help="Enable every installed pack.")
        parser.add_argument("--with-key", action="store_true", help="Create an owner API key; print it last.")

    def handle(self, *args, slug: str, name: str, owner: str | None, **options) -> None:
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"tenant {slug!r} already exists")
        installed = registry.installed_packs()
        wanted = list(installed) if options["all_verticals"] else options["vertical"]
        unknown = [v for v in wanted if v not in installed]
        if unknown:
            raise CommandError(f"not installed: {', '.join(unknown)} (installed: {', '.join(installed) or 'none'})")
        with transaction.atomic():
            tenant, _ = services.create_tenant(slug=slug, name=name, owner_email=owner, actor="cli:createtenant")
            for vertical in wanted:
                registry.enable(tenant, vertical)
            new_key = None
            if options["with_key"]:
                new_key = services.create_api_key(
                    tenant=tenant, name="createtenant", role=Membership.Role.OWNER, actor="cli:createtenant"
                )
        self.stdout.write(f"Created tenant {tenant.slug}" + (f" owned by {owner}" if owner else ""))
        if wanted:
            self.stdout.write(f"Enabled verticals: {', '.join(wanted)}")
        if new_key is not None:
            self.stdout.write(f"API key (owner role, shown once; prefix {new_key.api_key.prefix}):")
            self.stdout.write(new_key.secret)
