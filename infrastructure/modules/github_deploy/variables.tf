variable "name" {
  description = "Name of the IAM role the deploy workflow assumes."
  type        = string
  default     = "github-deploy-develop"
}

variable "create_oidc_provider" {
  description = "Create the account's GitHub OIDC provider (token.actions.githubusercontent.com). An account has at most one per URL: set false where it already exists, and the module looks it up instead."
  type        = bool
  default     = true
}

variable "github_org" {
  description = "GitHub organization (or user) that owns the repository, e.g. \"example\"."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9-]*$", var.github_org))
    error_message = "github_org must be a plain GitHub owner name: no wildcard, slash or colon."
  }
}

variable "github_repo" {
  description = "Repository whose .github/workflows/deploy.yml assumes the role, e.g. \"opsweb\"."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+$", var.github_repo))
    error_message = "github_repo must be a plain GitHub repository name: no wildcard, slash or colon."
  }
}

variable "repository_arn" {
  description = "ECR repository the workflow pushes to and reads the digest from (the app repository)."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
