"""Public recipe pages: the list and one recipe with its versions and latest script."""

from __future__ import annotations

from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from recipes.models import Recipe


def recipe_list(request: HttpRequest) -> HttpResponse:
    recipes = (
        Recipe.objects.select_related("author__provider_profile")
        .annotate(version_count=Count("versions"), latest_number=Max("versions__number"))
        .order_by("name")
    )
    return render(request, "recipes/recipe_list.html", {"recipes": recipes})


def recipe_detail(request: HttpRequest, slug: str) -> HttpResponse:
    recipe = get_object_or_404(Recipe.objects.select_related("author__provider_profile"), slug=slug)
    versions = list(recipe.versions.order_by("-number"))
    return render(
        request,
        "recipes/recipe_detail.html",
        {"recipe": recipe, "versions": versions, "latest": versions[0] if versions else None},
    )
