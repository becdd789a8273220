"""`python manage.py enablevertical <tenant> <pack> [--disable]`: first-time setup from scripts
(the demo); operators use the dashboard or the admin."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from tunery.dashboard import services
from tunery.tenants.models import Tenant


class Command(BaseCommand):
    help = "Enable (or disable) an installed vertical pack for a tenant. Idempotent; audit-logged."

    def add_arguments(self, parser) -> None:
        parser.add_argument("tenant", help="tenant slug")
        parser.add_argument("vertical", help="pack id, e.g. customer_service")
        parser.add_argument("--disable", action="store_true")

    def handle(self, *args, tenant: str, vertical: str, disable: bool, **options) -> None:
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"no tenant {tenant!r}")
        try:
            services.set_vertical_enabled(tenant=found, vertical=vertical, enabled=not disable, actor="manage.py")
        except services.UnknownVertical as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{vertical} {'disabled' if disable else 'enabled'} for {tenant}")
