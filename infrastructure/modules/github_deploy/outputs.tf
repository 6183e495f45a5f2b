output "role_arn" {
  description = "The role deploy.yml assumes: set it as the repository variable AWS_ROLE_ARN."
  value       = aws_iam_role.this.arn
}

output "oidc_provider_arn" {
  description = "The account's GitHub OIDC provider (created here or looked up)."
  value       = local.oidc_provider_arn
}
