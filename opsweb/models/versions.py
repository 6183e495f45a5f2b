"""Image versions: what CI registers, identified by digest, and what its scan found."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

DIGEST_RE = r"^sha256:[0-9a-f]{64}\Z"
# \Z, not $: $ also matches before a trailing newline.
# Full 40-hex commit ids only: a short sha is ambiguous over time, and CI always has the full one.
GIT_SHA_RE = r"^[0-9a-f]{40}\Z"
# Docker's tag grammar: up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'.
TAG_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z"
# Docker's repository grammar (lowercase path components, optional registry host and port).
REPOSITORY_RE = (
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z"
)

validate_digest = RegexValidator(
    DIGEST_RE, "A digest is 'sha256:' followed by 64 lowercase hex characters.", "invalid_digest"
)
validate_git_sha = RegexValidator(
    GIT_SHA_RE, "A git sha is the full 40-character lowercase hex commit id.", "invalid_git_sha"
)
validate_tag = RegexValidator(
    TAG_RE,
    "A tag is 1–128 letters, digits, '_', '.' or '-', not starting with '.' or '-'.",
    "invalid_tag",
)
validate_repository = RegexValidator(
    REPOSITORY_RE,
    "A repository is a lowercase image name such as 'registry.example.com/team/app'.",
    "invalid_repository",
)


class ImageVersion(models.Model):
    """One built image of an application: immutable by digest, identified by tag for people.

    A version marked bad (bad for its application) can no longer be deployed or promoted
    anywhere, until an approver of the environment that answers for the mark lifts it
    (``services.lift_bad_mark``).
    """

    application = models.ForeignKey(
        "Application",
        null=True,  # filled from the repository when registered; null only mid-upgrade
        blank=True,
        db_index=False,  # image_application_newest leads with it
        on_delete=models.PROTECT,
        related_name="versions",
    )
    repository = models.CharField(max_length=255, validators=[validate_repository])
    tag = models.CharField(max_length=128, validators=[validate_tag])
    digest = models.CharField(max_length=71, validators=[validate_digest])
    git_sha = models.CharField(max_length=40, blank=True, validators=[validate_git_sha])
    branch = models.CharField(max_length=255, blank=True)
    commit_message = models.TextField(blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    build_url = models.URLField(blank=True, max_length=500)
    author_email = models.EmailField(
        blank=True, help_text="The commit's author, who cannot approve it where that is forbidden."
    )
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    registered_at = models.DateTimeField(default=timezone.now)
    is_bad = models.BooleanField("marked bad", default=False)
    bad_reason = models.TextField(blank=True)
    marked_bad_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    marked_bad_at = models.DateTimeField(null=True, blank=True)
    scan_checked_at = models.DateTimeField(null=True, blank=True)
    scan_status = models.CharField(max_length=40, blank=True)
    scan_counts = models.JSONField(default=dict, blank=True)
    scan_top_ids = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-registered_at", "-id"]
        permissions = [("mark_bad", "Can mark an image version bad")]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "digest"],
                name="unique_digest_per_repository",
                violation_error_message="This repository already has a version with that digest.",
            ),
            models.UniqueConstraint(
                fields=["repository", "tag"],
                name="unique_tag_per_repository",
                violation_error_message="This repository already has a version with that tag; "
                "tags are immutable.",
            ),
            models.CheckConstraint(
                condition=Q(digest__regex=DIGEST_RE),
                name="digest_is_sha256",
                violation_error_message=validate_digest.message,
            ),
            models.CheckConstraint(
                condition=Q(git_sha="") | Q(git_sha__regex=GIT_SHA_RE),
                name="git_sha_is_full_hex",
                violation_error_message=validate_git_sha.message,
            ),
        ]
        indexes = [
            models.Index(fields=["git_sha"]),
            models.Index(fields=["-registered_at", "-id"], name="image_newest_first"),
            models.Index(
                fields=["application", "-registered_at", "-id"], name="image_application_newest"
            ),
            # A tag or its start (also the equality a tag search needs).
            models.Index(
                fields=["tag"], name="image_tag_prefix", opclasses=["varchar_pattern_ops"]
            ),
            # Prefix search ("sha256:ab12…", a short commit) through an index on PostgreSQL,
            # whose default collation cannot use a plain b-tree for LIKE 'x%'.
            models.Index(
                fields=["digest"], name="image_digest_prefix", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["git_sha"], name="image_git_sha_prefix", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    def save(self, *args, **kwargs):
        if self.application_id is None:
            # The application is the one that releases the repository (services check that
            # one does; rows written by other means get it here).
            from .environments import ApplicationRepository

            claim = ApplicationRepository.objects.filter(repository=self.repository).first()
            self.application_id = claim.application_id if claim else None
        super().save(*args, **kwargs)

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def short_sha(self) -> str:
        return self.git_sha[:7]

    @property
    def scan_summary(self) -> str:
        """'CRITICAL 1, HIGH 3 (CVE-2024-1, …)', 'no findings', or '' when never read."""
        if not self.scan_checked_at:
            return ""
        if not self.scan_counts:
            return "no findings" if self.scan_status == "COMPLETE" else self.scan_status.lower()
        order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED"]
        counts = ", ".join(f"{s} {self.scan_counts[s]}" for s in order if self.scan_counts.get(s))
        ids = ", ".join(self.scan_top_ids[:5])
        return counts + (f" ({ids})" if ids else "")
