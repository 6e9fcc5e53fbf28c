"""Admin for recipes, their immutable versions, runs and run output."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html

from marketplace.admin import ReadOnlyAdminMixin, recipe_output_html, status_badge
from recipes.models import Recipe, RecipeLogChunk, RecipeRun, RecipeVersion

VERSION_FIELDS = ("recipe", "number", "script", "changelog", "created_at")


def script_html(script: str):
    """Render a script as a scrollable preformatted block."""
    return format_html('<pre style="max-height:30em;overflow:auto">{}</pre>', script)


class RecipeVersionInline(ReadOnlyAdminMixin, admin.StackedInline):
    """Existing versions of a recipe; publish a new one from the recipe version admin."""

    model = RecipeVersion
    fields = ("number", "changelog", "created_at", "script_display")
    readonly_fields = fields
    ordering = ("-number",)
    extra = 0
    show_change_link = True

    @admin.display(description="Script")
    def script_display(self, obj: RecipeVersion):
        return script_html(obj.script)


@admin.register(Recipe)
class RecipeAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "author", "version_count", "created_at")
    list_select_related = ("author",)
    search_fields = ("name", "slug", "author__email")
    autocomplete_fields = ("author",)
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("created_at",)
    date_hierarchy = "created_at"
    inlines = (RecipeVersionInline,)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(version_total=Count("versions"))

    @admin.display(description="Versions", ordering="version_total")
    def version_count(self, obj: Recipe) -> int:
        return obj.version_total


@admin.register(RecipeVersion)
class RecipeVersionAdmin(admin.ModelAdmin):
    """Recipe versions: staff can publish a new version; existing versions are immutable."""

    list_display = ("__str__", "recipe", "number", "created_at")
    list_select_related = ("recipe",)
    search_fields = ("recipe__name", "recipe__slug", "changelog")
    autocomplete_fields = ("recipe",)
    date_hierarchy = "created_at"
    fields = VERSION_FIELDS

    def get_readonly_fields(self, request, obj=None):
        return ("created_at",)

    def has_change_permission(self, request, obj=None) -> bool:
        # Saving an existing version raises in RecipeVersion.save(), so its page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class RecipeLogChunkInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = RecipeLogChunk
    fields = ("sequence", "created_at", "text")
    readonly_fields = fields
    extra = 0


@admin.register(RecipeRun)
class RecipeRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Recipe runs and their output, read-only: the provisioning pipeline writes them."""

    list_display = ("id", "contract", "status_badge", "executed", "exit_code", "timed_out", "started_at", "duration_seconds")
    list_filter = ("status", "executed", "timed_out", "truncated")
    list_select_related = ("contract",)
    search_fields = ("contract__public_id", "error")
    date_hierarchy = "started_at"
    readonly_fields = ("output_display",)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: RecipeRun):
        return status_badge(obj.get_status_display(), obj.status_colour)

    @admin.display(description="Output")
    def output_display(self, obj: RecipeRun):
        return recipe_output_html(obj)


@admin.register(RecipeLogChunk)
class RecipeLogChunkAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Single pieces of run output; the run's page shows them joined."""

    list_display = ("run", "sequence", "created_at")
    list_select_related = ("run",)
    search_fields = ("run__contract__public_id",)
    date_hierarchy = "created_at"
