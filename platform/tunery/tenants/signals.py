"""A deleted tenant's objects in the models' object storage go with it (every path that deletes
the row: the admin, a shell, a cascade), once the deletion commits."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from tunery.core import artifacts
from tunery.tenants.models import Tenant

log = logging.getLogger(__name__)


def delete_tenant_objects(slug: str) -> None:
    try:
        artifacts.delete_objects(slug)
    except artifacts.StorageError as exc:
        log.error("tenant %s deleted, but its objects could not be: %s", slug, exc.message)


@receiver(post_delete, sender=Tenant, dispatch_uid="tunery.tenants.delete_objects")
def _tenant_deleted(sender: type[Tenant], instance: Tenant, **kwargs: Any) -> None:
    slug = instance.slug
    if slug:
        transaction.on_commit(lambda: delete_tenant_objects(slug))
