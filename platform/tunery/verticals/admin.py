from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages

from tunery.core.admin import AuditedModelAdmin
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement


def _pack_choices() -> list[tuple[str, str]]:
    return [(pack.id, f"{pack.name} ({pack.id} {pack.version})") for pack in registry.installed_packs().values()]


class VerticalEnablementForm(forms.ModelForm):
    class Meta:
        model = VerticalEnablement
        fields = ["tenant", "vertical", "enabled", "config"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = _pack_choices()
        current = self.instance.vertical if self.instance and self.instance.pk else None
        if current and current not in dict(choices):
            choices.append((current, f"{current} (not installed)"))
        self.fields["vertical"] = forms.ChoiceField(choices=choices, help_text="An installed pack.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("config") is None and "config" in cleaned:
            cleaned["config"] = {}  # a blank box means no overrides
        pack = registry.get_pack(cleaned.get("vertical") or "")
        # An uninstalled pack cannot check its config; the row may still be switched off or removed.
        if pack is not None and "config" in cleaned:
            for problem in pack.config_problems(cleaned["config"]):
                self.add_error("config", problem)
        return cleaned


class VerticalEnablementInline(admin.TabularInline):
    model = VerticalEnablement
    form = VerticalEnablementForm
    extra = 0


@admin.register(VerticalEnablement)
class VerticalEnablementAdmin(AuditedModelAdmin):
    form = VerticalEnablementForm
    list_display = ["tenant", "vertical", "enabled", "updated_at"]
    list_filter = ["enabled", "vertical"]

    def changelist_view(self, request, extra_context=None):
        for name, reason in registry.failures().items():
            messages.error(request, f"Vertical pack '{name}' was not loaded: {reason}")
        return super().changelist_view(request, extra_context)
