variable "aws_region" {
  description = "Region of this environment (the same as the state bucket's)."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_id" {
  description = "VPC of this environment (owned by the network team, not by this repository)."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the tasks."
  type        = list(string)
}

variable "alb_listener_arn" {
  description = "HTTPS listener (TLS 1.2+, the environment's certificate) of the shared load balancer."
  type        = string
}

variable "alb_security_group_id" {
  description = "Security group of that load balancer."
  type        = string
}

variable "app_host_name" {
  description = "Host name of the application in this environment."
  type        = string
}

variable "app_image_digest" {
  description = "Digest of the image the service is created with (sha256:...). Used once: from then on opsweb deploys, and Terraform ignores the service's task definition."
  type        = string
}

variable "database_subnet_ids" {
  description = "Private subnets for opsweb's database, in at least two availability zones."
  type        = list(string)
}

variable "opsweb_host_name" {
  description = "Host name of the release console."
  type        = string
}

variable "opsweb_image_digest" {
  description = "Digest of the opsweb image to run (sha256:...). Changing it redeploys opsweb; the circuit breaker rolls a failed one back."
  type        = string
}

variable "github_org" {
  description = "GitHub owner of the repository whose deploy workflow assumes the deploy role."
  type        = string
}

variable "github_repo" {
  description = "That repository's name; only its develop branch may assume the deploy role."
  type        = string
}

variable "create_github_oidc_provider" {
  description = "Create the account's GitHub OIDC provider; false if it already exists (one per account)."
  type        = bool
  default     = true
}
