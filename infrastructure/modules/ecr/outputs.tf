output "repository_name" {
  description = "Repository name."
  value       = aws_ecr_repository.this.name
}

output "repository_url" {
  description = "Repository URL; images are referenced as <url>@sha256:<digest>."
  value       = aws_ecr_repository.this.repository_url
}

output "repository_arn" {
  description = "Repository ARN, for IAM policies."
  value       = aws_ecr_repository.this.arn
}

output "kms_key_arn" {
  description = "The key that encrypts the repository's images."
  value       = aws_kms_key.this.arn
}
