"""Rows written once as a record: never edited or deleted, in bulk or one at a time."""

from __future__ import annotations

from django.db import models


class ImmutableQuerySet(models.QuerySet):
    """Refuses bulk update and delete: the rows it holds are a record, not state."""

    def update(self, **kwargs):
        raise PermissionError(f"{self.model._meta.verbose_name_plural} cannot be changed.")

    def delete(self):
        raise PermissionError(f"{self.model._meta.verbose_name_plural} cannot be deleted.")


class ImmutableModel(models.Model):
    """A row written once and never edited or deleted, superusers included."""

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError(f"A {self._meta.verbose_name} cannot be changed once recorded.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError(f"A {self._meta.verbose_name} cannot be deleted.")
