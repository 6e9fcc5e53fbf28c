"""Recipes (shell scripts that turn a fresh VM into a service), their versions and runs."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from marketplace.validators import validate_multiline_text, validate_visible_text


class Recipe(models.Model):
    """A named recipe by one author; its script text lives in immutable versions."""

    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="recipes")
    name = models.CharField(max_length=120, validators=[validate_visible_text])
    slug = models.SlugField(max_length=140, unique=True)
    description = models.TextField(blank=True, max_length=10000, validators=[validate_multiline_text])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("recipes:detail", kwargs={"slug": self.slug})

    @property
    def latest_version(self) -> RecipeVersion | None:
        return self.versions.order_by("-number").first()


class RecipeVersion(models.Model):
    """One immutable script text of a recipe. Offerings point at a version; contracts copy it."""

    recipe = models.ForeignKey(Recipe, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    script = models.TextField(max_length=200_000)
    changelog = models.TextField(blank=True, max_length=5000)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["recipe", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["recipe", "number"], name="recipeversion_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.recipe.name} v{self.number}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.pop("allow_update", False):
            raise ValueError(f"Recipe version {self.pk} is immutable; publish a new version instead.")
        super().save(*args, **kwargs)


class RecipeRunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    SIMULATED = "simulated", "Simulated (Sandbox)"


RECIPE_RUN_STATUS_COLOURS = {
    RecipeRunStatus.RUNNING: "blue",
    RecipeRunStatus.SUCCEEDED: "green",
    RecipeRunStatus.FAILED: "red",
    RecipeRunStatus.TIMED_OUT: "red",
    RecipeRunStatus.SIMULATED: "grey",
}


class RecipeRun(models.Model):
    """One execution of a contract's or a self-provisioned resource's recipe script over SSH, with its outcome."""

    contract = models.ForeignKey(
        "marketplace.Contract", on_delete=models.CASCADE, null=True, blank=True, related_name="recipe_runs"
    )
    resource = models.ForeignKey(
        "provisioning.Resource", on_delete=models.CASCADE, null=True, blank=True, related_name="recipe_runs"
    )
    status = models.CharField(max_length=16, choices=RecipeRunStatus.choices, default=RecipeRunStatus.RUNNING)
    executed = models.BooleanField(default=True, help_text="False when the Sandbox backend only simulated the run.")
    exit_code = models.IntegerField(null=True, blank=True)
    timed_out = models.BooleanField(default=False)
    timeout_seconds = models.PositiveIntegerField()
    output_bytes = models.PositiveIntegerField(default=0)
    truncated = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(contract__isnull=False, resource__isnull=True)
                | models.Q(contract__isnull=True, resource__isnull=False),
                name="reciperun_contract_or_resource",
            ),
        ]

    def __str__(self) -> str:
        owner = f"contract {self.contract_id}" if self.contract_id else f"resource {self.resource_id}"
        return f"Recipe run {self.pk} for {owner}: {self.status}"

    @property
    def status_colour(self) -> str:
        return RECIPE_RUN_STATUS_COLOURS.get(self.status, "grey")

    @property
    def output(self) -> str:
        return "".join(self.chunks.order_by("sequence").values_list("text", flat=True))


class RecipeLogChunk(models.Model):
    """A piece of a recipe run's output, stored as it streams in."""

    run = models.ForeignKey(RecipeRun, on_delete=models.CASCADE, related_name="chunks")
    sequence = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["run", "sequence"], name="recipelogchunk_sequence_unique"),
        ]

    def __str__(self) -> str:
        return f"Chunk {self.sequence} of recipe run {self.run_id}"
